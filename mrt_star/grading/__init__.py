"""Grade a model's final answer against a reference answer (symbolic or Hendrycks-MATH string mode).

Cheap to import: math-verify and sympy load only inside the grading worker processes.
"""

from mrt_star.grading._errors import WorkerStartError
from mrt_star.grading.extract import extract_answer, extract_answer_detail
from mrt_star.grading.grader import GRADING_MODES, Grader, GradeResult, grade, grade_detail
from mrt_star.grading.kinds import PERCENT_POLICIES

__all__ = ["GRADING_MODES", "PERCENT_POLICIES", "GradeResult", "Grader", "WorkerStartError", "extract_answer",
           "extract_answer_detail", "grade", "grade_detail"]
