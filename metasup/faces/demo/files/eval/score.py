"""The demo's fitness: how close ten steps of brain.think() bring x to its target."""

import json
import sys

sys.path.insert(0, ".")
import brain

x, target = 0.0, 42.0
for _ in range(10):
    x = brain.think(x, target)
error = abs(target - x) / target
print(json.dumps({"score": round(1 - error, 6), "success_rate": 1.0, "error_rate": 0.0}))
