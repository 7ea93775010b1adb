"""
Benchmarks of the jupyter formula (run them with ``bench/run.py``).

The rows live by what they need: ``host`` (the proof deployment: rows 1, 3-5),
``upgrade`` (row 10, on the proof deployment too), ``instances`` (rows 7-9, two
deployments of instances), ``lab`` (rows 2 and 6, systemd-nspawn nodes); ``common``
holds the table's rows and the statistics.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the test support (support.*, jflab) and the proof deployment (tests/browser/proof.py)
for _sub in ("tests/browser", "tests"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))
