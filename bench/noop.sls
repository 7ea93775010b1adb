# The baseline of bench/run.py row 1: what a state.apply costs when it has one state
# that does nothing (applied as `state.apply bench.noop`; the repo root is in file_roots).
bench-noop:
  test.nop
