"""The evolution demo's agent: it only stays up (the search is over shellsort.py)."""

import time

while True:
    time.sleep(60)
