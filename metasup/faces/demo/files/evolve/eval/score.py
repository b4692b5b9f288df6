"""The evolution demo's fitness: how many times fewer comparisons shell sort needs than
insertion sort on the same fixed lists (1.0: no better). Deterministic, so noise-free."""

import json
import random
import sys

sys.path.insert(0, ".")
import shellsort


def insertion_comparisons(items: list[int]) -> int:
    a, count = list(items), 0
    for i in range(1, len(a)):
        value, j = a[i], i
        while j >= 1:
            count += 1
            if a[j - 1] <= value:
                break
            a[j] = a[j - 1]
            j -= 1
        a[j] = value
    return count


rng = random.Random(7)
lists = [[rng.randrange(10_000) for _ in range(400)] for _ in range(4)]
plain = sum(insertion_comparisons(items) for items in lists)
shell = 0
for items in lists:
    result, count = shellsort.sort(items)
    assert result == sorted(items), "shellsort.sort did not sort"
    shell += count
print(json.dumps({"score": round(plain / shell, 4), "comparisons": shell}))
