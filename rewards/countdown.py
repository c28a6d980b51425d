"""The `"countdown"` reward: an arithmetic expression over the given numbers that hits the target.

The expression is model-written, so it is never handed to `eval` or `ast`: a small tokenizer
and recursive-descent parser accept only ASCII integers, `+ - * /`, unary signs and
parentheses, and evaluate with exact `fractions.Fraction` arithmetic. Limits are checked in
order of cost (length before tokenizing, token count and literal size while tokenizing,
nesting depth while parsing, which numbers were used before evaluating), so no input can make
it slow: `9**9**9` and `2^100` are rejected at the tokenizer, never computed.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from fractions import Fraction

from rewards.extract import answer_tag

MAX_EXPRESSION_CHARS = 1_000
MAX_TOKENS = 200
MAX_DEPTH = 50            # nested parentheses plus unary signs
MAX_LITERAL = 10**6
OPERATORS = "+-*/"
DIGITS = "0123456789"     # ASCII only: str.isdigit() would also accept "١٢" or "²"
SPACES = " \t"
_CLAIMED_RESULT = re.compile(r"-?[0-9]{1,7}", re.ASCII)  # the "54" of "... = 54"


class ExpressionError(ValueError):
    """The answer is not an expression this reward accepts (syntax, limits, numbers)."""


def countdown_reward(
    completion: str,
    numbers: object = None,
    target: object = None,
    *,
    use_all: bool = False,
    format_score: float = 0.0,
    fallback_last_line: bool = True,
    **fields: object,
) -> float:
    """1.0 if the answer is an expression over `numbers` that equals `target`, else 0.0.

    The answer is the last `<answer>` block; if there is none and `fallback_last_line`, the
    part before `=` of the last line that has one. It may end with `= <target>`.
    `use_all`: each number must be used exactly once (registered as "countdown_all");
    otherwise at most once. `format_score`: the reward for an answer that parses as an
    expression but is wrong (wrong value, numbers not allowed, division by zero) — TinyZero
    uses 0.1. Raises ValueError only for a bad dataset row (`numbers`, `target`); never on
    model text.
    """
    pool = _int_list(numbers, "numbers")
    goal = _as_int(target, "target")
    if not isinstance(completion, str):
        return 0.0
    text = _answer_text(completion, fallback_last_line)
    if text is None:
        return 0.0
    try:
        text = _strip_claimed_result(text, goal)
        tree = parse_expression(text)
    except ExpressionError:
        return 0.0
    used = Counter(_literals(tree))
    allowed = Counter(pool)
    numbers_ok = used == allowed if use_all else not (used - allowed)
    if numbers_ok and _evaluate(tree) == goal:
        return 1.0
    return float(format_score)


def countdown_all_reward(
    completion: str, numbers: object = None, target: object = None, **fields: object
) -> float:
    """`countdown_reward` with `use_all=True`: every given number exactly once."""
    fields.pop("use_all", None)
    return countdown_reward(completion, numbers, target, use_all=True, **fields)


def _int_list(value: object, name: str) -> list[int]:
    if value is None or isinstance(value, (str, bytes)):
        raise ValueError(
            f"countdown: row field '{name}' must be a list of integers, got {value!r:.80}")
    return [_as_int(item, name) for item in value]  # type: ignore[union-attr]


def _as_int(value: object, name: str) -> int:
    # operator.index accepts int and numpy integers, refuses floats, strings and None.
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        message = f"countdown: row field '{name}' must hold integers, got {value!r:.80}"
        raise ValueError(message) from None


def _answer_text(completion: str, fallback_last_line: bool) -> str | None:
    """The answer block, or the left side of the last line with an `=` (prose trimmed off)."""
    tag = answer_tag(completion)
    if tag is not None or not fallback_last_line:
        return tag
    equals = completion.rfind("=")
    if equals < 0:
        return None
    line_start = completion.rfind("\n", 0, equals) + 1
    # One character more than an expression may have: enough to see that it is too long.
    left = completion[max(line_start, equals - MAX_EXPRESSION_CHARS - 1):equals]
    # Keep the longest run of expression characters that ends at the "=": "So 3 + 4" -> "3 + 4".
    start = len(left)
    while start > 0 and left[start - 1] in DIGITS + OPERATORS + SPACES + "()":
        start -= 1
    return left[start:].strip() or None


def _strip_claimed_result(text: str, goal: int) -> str:
    """Drop a trailing "= <target>"; any other right-hand side makes the answer invalid."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("expression too long")
    if "=" not in text:
        return text
    left, _, right = text.partition("=")
    right = right.strip()
    if _CLAIMED_RESULT.fullmatch(right) is None or int(right) != goal:
        raise ExpressionError("the right-hand side is not the target")
    return left


def tokenize(text: str) -> list[str]:
    """ASCII integers and single-character operators/parentheses; anything else is an error."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("expression too long")
    tokens: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in SPACES:
            index += 1
            continue
        if char in DIGITS:
            end = index
            while end < len(text) and text[end] in DIGITS:
                end += 1
            if end - index > len(str(MAX_LITERAL)) or int(text[index:end]) > MAX_LITERAL:
                raise ExpressionError("literal too large")
            tokens.append(text[index:end])
            index = end
        elif char in OPERATORS or char in "()":
            if char == "*" and text[index + 1:index + 2] == "*":
                raise ExpressionError("exponentiation is not allowed")
            tokens.append(char)
            index += 1
        else:
            raise ExpressionError(f"character {char!r} is not allowed")
        if len(tokens) > MAX_TOKENS:
            raise ExpressionError("too many tokens")
    return tokens


def parse_expression(text: str) -> tuple:
    """Parse into a tree: ("num", int) | ("neg", node) | (op, left, right)."""
    parser = _Parser(tokenize(text))
    tree = parser.expression(0)
    if parser.position != len(parser.tokens):
        raise ExpressionError(f"unexpected {parser.tokens[parser.position]!r}")
    return tree


class _Parser:
    """Recursive descent over: expr := term (('+'|'-') term)*; term := factor (('*'|'/')
    factor)*; factor := ('+'|'-') factor | INT | '(' expr ')'. Depth is capped, so the
    recursion never nears Python's limit whatever the input."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.position += 1
        return token

    def expression(self, depth: int) -> tuple:
        node = self.term(depth)
        while self._peek() in ("+", "-"):
            node = (self._take(), node, self.term(depth))
        return node

    def term(self, depth: int) -> tuple:
        node = self.factor(depth)
        while self._peek() in ("*", "/"):
            node = (self._take(), node, self.factor(depth))
        return node

    def factor(self, depth: int) -> tuple:
        if depth >= MAX_DEPTH:
            raise ExpressionError("expression nested too deeply")
        token = self._take()
        if token in ("+", "-"):
            operand = self.factor(depth + 1)
            return ("neg", operand) if token == "-" else operand
        if token == "(":
            node = self.expression(depth + 1)
            if self._take() != ")":
                raise ExpressionError("unbalanced parentheses")
            return node
        if token[0] in DIGITS:
            return ("num", int(token))
        raise ExpressionError(f"unexpected {token!r}")


def _literals(node: tuple) -> list[int]:
    """The integer literals of a tree, in order (the tree is at most MAX_DEPTH deep)."""
    if node[0] == "num":
        return [node[1]]
    return [value for child in node[1:] for value in _literals(child)]


def _evaluate(node: tuple) -> Fraction | None:
    """Exact value of a tree, or None on division by zero."""
    kind = node[0]
    if kind == "num":
        return Fraction(node[1])
    if kind == "neg":
        value = _evaluate(node[1])
        return None if value is None else -value
    left, right = _evaluate(node[1]), _evaluate(node[2])
    if left is None or right is None:
        return None
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return None if right == 0 else left / right
