"""The demo's check: brain.py imports and moves x toward the target."""

import sys

sys.path.insert(0, ".")
import brain

assert brain.think(0.0, 10.0) > 0.0, "think() must move toward the target"
