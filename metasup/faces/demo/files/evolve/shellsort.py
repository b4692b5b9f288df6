"""Shell sort over the gaps in gaps.txt (six slots, 0 for an unused one), largest first and
always ending in 1. With no gaps set it is insertion sort; good gaps make it far cheaper.
`sort` counts comparisons."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def gaps() -> list[int]:
    text = (HERE / "gaps.txt").read_text().splitlines()
    found = [int(line) for line in text if line.strip() and not line.startswith("#")]
    return sorted({g for g in found if g >= 1} | {1}, reverse=True)


def sort(items: list[int]) -> tuple[list[int], int]:
    """The sorted copy and the number of comparisons it took."""
    a = list(items)
    comparisons = 0
    for gap in gaps():
        for i in range(gap, len(a)):
            value, j = a[i], i
            while j >= gap:
                comparisons += 1
                if a[j - gap] <= value:
                    break
                a[j] = a[j - gap]
                j -= gap
            a[j] = value
    return a, comparisons
