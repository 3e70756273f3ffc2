"""A multi grader's `calculate_output`: arithmetic over the sub-graders' rewards, never eval().

simpleeval evaluates the expression with only the operators and functions OpenAI documents
(`+ - * /`, `^` or `**` as power, unary minus; min, max, abs, floor, ceil, exp, sqrt, log) and the
sub-grader names as the only variables. `check` parses it once when the grader is validated, so a
typo or an unknown name is a 400 before any item is graded.
"""

from __future__ import annotations

import ast
import math
import operator

from dora_contract.graders import FORMULA_FUNCTIONS
from dora_graders.errors import GraderSpecError, GradingError

FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}
assert tuple(FUNCTIONS) == FORMULA_FUNCTIONS  # one list, in the contract
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Load, ast.Constant,
                  *OPERATORS)


def _python_syntax(formula: str) -> str:
    """`^` is power in OpenAI's formulas, with power's precedence: written as Python's `**`."""
    return formula.replace("^", "**")


def check(formula: str, names: set[str]) -> None:
    """GraderSpecError (field calculate_output) unless `formula` is arithmetic over `names`."""
    try:
        tree = ast.parse(_python_syntax(formula), mode="eval")
    except SyntaxError as error:
        raise GraderSpecError("calculate_output", f"is not a formula: {error.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise GraderSpecError("calculate_output", f"'{ast.unparse(node)}' is not allowed; use numbers, the "
                                  f"grader names, + - * / ^ and {', '.join(FORMULA_FUNCTIONS)}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise GraderSpecError("calculate_output", f"{node.value!r} is not a number")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                                               and not node.keywords):
            raise GraderSpecError("calculate_output", f"'{ast.unparse(node.func)}' is not a function here; "
                                  f"known: {', '.join(FORMULA_FUNCTIONS)}")
        if isinstance(node, ast.Name) and node.id not in names and node.id not in FUNCTIONS:
            raise GraderSpecError("calculate_output", f"'{node.id}' names no grader; graders: {sorted(names)}")


def evaluate(formula: str, scores: dict[str, float]) -> float:
    """The formula's value; GradingError(formula_parse_error) when it has none (division by zero, log(0))."""
    from simpleeval import SimpleEval

    evaluator = SimpleEval(operators=OPERATORS, functions=FUNCTIONS, names=dict(scores))
    try:
        value = float(evaluator.eval(_python_syntax(formula)))
    except (ArithmeticError, ValueError, TypeError, SyntaxError) as error:
        raise GradingError("formula_parse_error", f"calculate_output has no value: {error}") from None
    if not math.isfinite(value):
        raise GradingError("formula_parse_error", f"calculate_output is not finite: {value}")
    return value
