"""Grade a model's final answer against a reference answer (symbolic or Hendrycks-MATH string mode).

Cheap to import: math-verify and sympy load only inside the grading worker processes.
"""

from mrt_star.grading.extract import extract_answer
from mrt_star.grading.grader import GRADING_MODES, Grader, GradeResult, WorkerStartError, grade, grade_detail

__all__ = ["GRADING_MODES", "GradeResult", "Grader", "WorkerStartError", "extract_answer", "grade", "grade_detail"]
