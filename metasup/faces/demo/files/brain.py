"""The demo agent's own code, rewritten by the agent at the end of every run."""

GENERATION = 0
STEP_SCALE = 0.1


def think(x: float, target: float) -> float:
    """One step of the agent's 'work': move x toward the target."""
    return x + (target - x) * STEP_SCALE
