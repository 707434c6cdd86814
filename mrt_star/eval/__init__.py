"""Evaluation: the `eval` stage (`stage`), sampling and grading (`sampling`), metrics as pure functions
(`metrics`, `summary`) and plots (`plots`)."""
