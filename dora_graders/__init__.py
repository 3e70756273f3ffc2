"""OpenAI's graders (string_check, text_similarity, score_model, label_model, python, multi), torch-free.

The specs are dora_contract.graders; this package checks and runs them. Used by the API's
`/v1/fine_tuning/alpha/graders/run|validate`, by eval runs, and as the reward of reinforcement
fine-tuning. It knows no HTTP: a model grader's judge is a `complete` callable the caller lends.
"""

from dora_graders.errors import GraderSpecError, GradingError, ItemError, JudgeUnavailableError
from dora_graders.grading import PYTHON_DISABLED, GradingContext, asks_a_judge, check, check_item, grade
from dora_graders.judges import Complete, JudgeReply
from dora_graders.result import ERROR_FLAGS, GradeResult
from dora_graders.sandbox import PythonSandbox, SandboxLimits

__all__ = ["ERROR_FLAGS", "PYTHON_DISABLED", "Complete", "GradeResult", "GraderSpecError", "GradingContext",
           "GradingError", "ItemError", "JudgeReply", "JudgeUnavailableError", "PythonSandbox", "SandboxLimits",
           "asks_a_judge", "check", "check_item", "grade"]
