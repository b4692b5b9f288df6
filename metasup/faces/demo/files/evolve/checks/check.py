"""The evolution demo's check: the sort still sorts, edge cases included."""

import sys

sys.path.insert(0, ".")
import shellsort

for case in ([], [1], [2, 1], [3, 3, 1, 2], list(range(50, 0, -1))):
    assert shellsort.sort(case)[0] == sorted(case), f"wrong result for {case}"
