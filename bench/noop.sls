# The baseline of bench/run.py row 1: what a state.apply costs when it has one state
# that does nothing (applied as `state.apply bench.noop`; bench/run.py links bench/ into the file roots).
bench-noop:
  test.nop
