"""Training: loop.py (the loop, read top to bottom), step.py (the pure update and its jit),
guards.py (pre-emption and non-finite losses)."""
