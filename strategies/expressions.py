"""Arithmetic expressions in one variable, written by users in suite files (e.g. a task's sampling
weight as a function of the training fraction t), compiled from Python's own parser with a closed
grammar: numbers, the variable, + - * / **, parentheses and a few math functions. Nothing else is
evaluated: no names, attributes, calls or subscripts outside that list, so no code runs."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

FUNCTIONS: dict[str, Callable[..., float]] = {
    "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos,
    "abs": abs, "min": min, "max": max,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_LENGTH = 200


class ExpressionError(ValueError):
    pass


def compile_expression(text: str, variable: str = "t") -> Callable[[float], float]:
    """A function of `variable` computing `text`; ExpressionError says what is not allowed."""
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise ExpressionError(f"expected an expression (a string or a number), got {text!r}")
    text = str(text)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, RecursionError) as error:
        raise ExpressionError(f"cannot parse {text!r}: {getattr(error, 'msg', error)}") from None

    def build(node) -> Callable[[float], float]:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda x: value
        if isinstance(node, ast.Name):
            if node.id == variable:
                return lambda x: x
            if node.id in CONSTANTS:
                value = CONSTANTS[node.id]
                return lambda x: value
            raise ExpressionError(f"unknown name '{node.id}' in {text!r}; use {variable}, "
                                  f"{', '.join(CONSTANTS)} or a function: {', '.join(FUNCTIONS)}")
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            op, left, right = BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda x: op(left(x), right(x))
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            op, operand = UNARY[type(node.op)], build(node.operand)
            return lambda x: op(operand(x))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and not node.keywords and node.args):
            function, arguments = FUNCTIONS[node.func.id], [build(a) for a in node.args]
            return lambda x: function(*(a(x) for a in arguments))
        raise ExpressionError(f"'{ast.unparse(node)}' is not allowed in {text!r}: only numbers, {variable}, "
                              f"+ - * / **, parentheses and {', '.join(FUNCTIONS)}")

    try:
        compiled = build(tree)
    except RecursionError:
        raise ExpressionError(f"{text!r} is nested too deeply") from None

    def evaluate(x: float) -> float:
        try:
            value = float(compiled(float(x)))
        except (ArithmeticError, ValueError, TypeError) as error:  # overflow, log(0), 0 ** -1, ...
            raise ExpressionError(f"{text!r} at {variable} = {x:g}: {error}") from None
        if not math.isfinite(value):
            raise ExpressionError(f"{text!r} at {variable} = {x:g} is {value}")
        return value
    return evaluate
