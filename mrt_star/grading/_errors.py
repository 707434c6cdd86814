"""Exceptions shared by the grader and its worker pool (a module of its own, so neither imports the other)."""


class WorkerStartError(RuntimeError):
    """Grading workers die before they are ready (a broken install): nothing can be graded symbolically."""
