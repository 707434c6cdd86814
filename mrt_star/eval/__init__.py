"""Evaluation: metrics (pure functions) and plots; the `eval` stage itself is `mrt_star.evaluate`."""
