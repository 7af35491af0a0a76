"""JMESPath expressions of a spec (``when``, ``foreach``, ``select``): compiled once when the
spec is loaded, evaluated per request over a node's JSON input.

Expressions are data, never code: JMESPath has no way to import, call out or loop forever.
A syntax error becomes a Problem placed at the exact character of the YAML text where the
parser stopped (for a plain or quoted one-line scalar; for a block scalar, at the scalar and
with the column inside the expression in the message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

# ParsedResult.search builds a new interpreter per call (about half of a small search's
# cost); the interpreter keeps no state between visits, so one serves every expression
_INTERPRETER = TreeInterpreter()

from .errors import Problem
from .yaml_marks import LocatedDocument, Path


@dataclass(frozen=True)
class Expression:
    """One compiled JMESPath expression and the text it was written as."""

    text: str
    parsed: ParsedResult

    def search(self, data: Any) -> Any:
        return _INTERPRETER.visit(self.parsed.parsed, data)

    def test(self, data: Any) -> bool:
        """JMESPath truthiness: false, null, '', [] and {} are false; 0 is true."""
        return is_truthy(_INTERPRETER.visit(self.parsed.parsed, data))


def is_truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


class ExpressionSyntaxError(Exception):
    def __init__(self, message: str, offset: int | None):
        super().__init__(message)
        self.message = message
        self.offset = offset  # 0-based index into the expression's text, when known


def compile_expression(text: str) -> Expression:
    """Parse ``text``; raises ExpressionSyntaxError with the offset where parsing stopped."""
    if not text.strip():
        raise ExpressionSyntaxError("the expression is empty", 0)
    try:
        return Expression(text, jmespath.compile(text))
    except jp_errors.IncompleteExpressionError as err:
        raise ExpressionSyntaxError("the expression ends too early", err.lex_position) \
            from None
    except jp_errors.LexerError as err:
        value = str(err.token_value or "")
        what = f"unclosed {value[0]}" if value[:1] in ("`", "'", '"') \
            else f"unexpected character {value[:1]!r}"
        raise ExpressionSyntaxError(what, err.lex_position) from None
    except jp_errors.ParseError as err:
        raise ExpressionSyntaxError(_parse_message(err), err.lex_position) from None
    except jp_errors.JMESPathError as err:  # any other refusal of the parser
        raise ExpressionSyntaxError(str(err).splitlines()[0], None) from None


def _parse_message(err: jp_errors.ParseError) -> str:
    """jmespath's 'Expecting: [...], got: eof' in plain words."""
    got = "the end of the expression" if str(err.token_type).lower() == "eof" \
        else repr(err.token_value)
    msg = str(err.msg)
    if msg.startswith("Expecting:"):
        expected = msg.removeprefix("Expecting:").split(", got:")[0].strip(" []")
        words = ", ".join(w.strip(" '").replace("_", " ") for w in expected.split(","))
        return f"expected {words}; found {got}"
    return f"unexpected {got}"


def compile_at(doc: LocatedDocument, path: Path, text: str, *, node: str, key: str,
               problems: list[Problem]) -> Expression | None:
    """Compile the expression written at ``path``; on a syntax error add a Problem placed at
    the character where parsing stopped, and return None."""
    try:
        return compile_expression(text)
    except ExpressionSyntaxError as err:
        problems.append(_place(doc, path, text, err, node=node, key=key))
        return None


def _place(doc: LocatedDocument, path: Path, text: str, err: ExpressionSyntaxError, *,
           node: str, key: str) -> Problem:
    where = doc.value_marks.get(path)
    style = doc.scalar_styles.get(path)
    offset = min(err.offset, len(text)) if err.offset is not None else None
    message = f"'{key}' is not a valid JMESPath expression: {err.message}"
    if offset is not None:
        message += f" (column {offset + 1} of {text!r})"
    if where is None:
        return doc.problem(path, message, node=node)
    line, col = where
    one_line = "\n" not in text and style in (None, '"', "'")
    if offset is not None and one_line:
        col += offset + (1 if style in ('"', "'") else 0)
    return Problem(line, col, node, message)
