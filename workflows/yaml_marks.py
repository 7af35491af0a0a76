"""YAML loading that remembers where every key and value stands in the text.

PyYAML's composer already attaches a start mark to every node; the stock constructor throws
them away. ``MarkedLoader`` composes the document, then builds plain Python data itself while
recording each key's and each value's 1-based ``(line, col)`` by its path in the data
(a tuple of mapping keys and list indexes). Duplicate keys and keys that are not strings,
which ``yaml.safe_load`` would pass over silently, become problems.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Problem

Path = tuple[str | int, ...]
Position = tuple[int, int]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_WORDS = {"int": "a number", "float": "a number", "bool": "a boolean", "null": "null",
              "timestamp": "a date"}


MAX_VALUES = 100_000  # a real spec has hundreds; aliases of aliases can reach billions


class TooLarge(Exception):
    """The document stands for more than MAX_VALUES values once its aliases are expanded."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__(mark)
        self.mark = mark


def _position(mark: yaml.Mark) -> Position:
    return (mark.line + 1, mark.column + 1)


@dataclass
class LocatedDocument:
    """Plain data from a YAML text plus where each part of it was written."""

    data: Any
    value_marks: dict[Path, Position] = field(default_factory=dict)
    key_marks: dict[Path, Position] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # scalars not written plain: path -> PyYAML style ('"', "'", '|', '>'); expressions use
    # it to place a column inside the written text
    scalar_styles: dict[Path, str] = field(default_factory=dict)

    def position(self, path: Path) -> Position | None:
        """Where the entry at ``path`` is written: its key for a mapping entry, else the value."""
        if path in self.key_marks:
            return self.key_marks[path]
        return self.value_marks.get(path)

    def problem(self, path: Path, message: str, node: str | None = None) -> Problem:
        """A Problem placed at ``path`` (falling back to its nearest written ancestor)."""
        while True:
            pos = self.position(path)
            if pos is not None or not path:
                break
            path = path[:-1]
        line, col = pos if pos is not None else (None, None)
        return Problem(line, col, node, message)


class MarkedLoader(yaml.SafeLoader):
    """A SafeLoader whose ``load_located`` keeps the marks of every key and value."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._doc = LocatedDocument(data=None)
        # an aliased node is built once and shared, as yaml.safe_load does; copying it at
        # every alias would let a few lines of anchors grow exponentially ("billion laughs")
        self._built: dict[int, Any] = {}
        # values each built node stands for once aliases are expanded: anything that walks the
        # data (the schema validator, messages) pays that, so it is capped
        self._sizes: dict[int, int] = {}

    def load_located(self) -> LocatedDocument:
        try:
            root = self.get_single_node()
            if root is not None:
                self._doc.data = self._build(root, (), frozenset())
            else:
                self._doc.value_marks[()] = (1, 1)
        finally:
            self.dispose()
        return self._doc

    # -- building ---------------------------------------------------------------------------

    def _build(self, node: yaml.Node, path: Path, active: frozenset[int]) -> Any:
        self._doc.value_marks[path] = _position(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            if node.style:
                self._doc.scalar_styles[path] = node.style
            return self.construct_object(node, deep=True)
        if id(node) in active:
            self._report(node, "a YAML alias refers to a node that contains it (recursive data)")
            return None
        if id(node) in self._built:  # an alias of a node built already; its marks are there
            return self._built[id(node)]
        active = active | {id(node)}
        built: Any
        if isinstance(node, yaml.SequenceNode):
            built = [self._build(item, path + (i,), active) for i, item in enumerate(node.value)]
            size = 1 + sum(self._sizes.get(id(item), 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            built = self._build_mapping(node, path, active)
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1)
                           for k, v in node.value)
        else:  # pragma: no cover - the composer makes only these three kinds
            raise AssertionError(f"unexpected YAML node {node!r}")
        if size > MAX_VALUES:
            raise TooLarge(node.start_mark)
        self._built[id(node)] = built
        self._sizes[id(node)] = size
        return built

    def _build_mapping(self, node: yaml.MappingNode, path: Path,
                       active: frozenset[int]) -> dict[str, Any]:
        self._check_explicit_keys(node)
        self.flatten_mapping(node)  # resolves '<<' merge keys; explicit keys come last and win
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key_text(key_node)
            if key is None:
                continue
            key_path = path + (key,)
            if key in result:  # a merged key overridden by an explicit one: forget the old marks
                self._forget(key_path)
            self._doc.key_marks[key_path] = _position(key_node.start_mark)
            result[key] = self._build(value_node, key_path, active)
        return result

    def _check_explicit_keys(self, node: yaml.MappingNode) -> None:
        """Report keys written twice in the same mapping, and keys that are not strings."""
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._report(key_node, "a key must be a plain name, not a list or a mapping")
                continue
            key = key_node.value
            if key_node.tag != _STR_TAG:
                kind = _TAG_WORDS.get(key_node.tag.rsplit(":", 1)[-1], f"'{key_node.tag}'")
                self._report(key_node, f"key {key!r} is read as {kind}, not as a name: "
                                       f"quote it ('{key}')")
            if key in seen:
                first = _position(seen[key].start_mark)[0]
                self._report(key_node, f"duplicate key '{key}' (first written at line {first})")
            else:
                seen[key] = key_node

    @staticmethod
    def _key_text(key_node: yaml.Node) -> str | None:
        return key_node.value if isinstance(key_node, yaml.ScalarNode) else None

    def _forget(self, prefix: Path) -> None:
        for marks in (self._doc.value_marks, self._doc.key_marks):
            for p in [p for p in marks if p[:len(prefix)] == prefix]:
                del marks[p]

    def _report(self, node: yaml.Node, message: str) -> None:
        line, col = _position(node.start_mark)
        self._doc.problems.append(Problem(line, col, None, message))


def _syntax_problem(err: yaml.YAMLError, text: str) -> Problem:
    """A Problem for a YAML error, placed where PyYAML found it."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        parts = [p for p in (err.context, err.problem) if p]
        title = "YAML error" if isinstance(err, yaml.constructor.ConstructorError) \
            else "YAML syntax error"
        message = f"{title}: " + ", ".join(parts) if parts else title
        if err.context and err.context_mark is not None and err.problem_mark is not None \
                and err.context_mark.line != err.problem_mark.line:
            message += f" (the construct started at line {err.context_mark.line + 1})"
        if mark is None:
            return Problem(None, None, None, message)
        line, col = _position(mark)
        return Problem(line, col, None, message)
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        col = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        return Problem(line, col, None,
                       f"YAML cannot contain the character {chr(err.character)!r} "
                       f"(code {err.character:#x})" if isinstance(err.character, int)
                       else f"YAML syntax error: {err}")
    return Problem(None, None, None, f"YAML syntax error: {err}")


def load_located(text: str) -> LocatedDocument:
    """Parse ``text`` into a LocatedDocument; YAML errors come back as problems, not raised."""
    try:
        return MarkedLoader(text).load_located()
    except yaml.YAMLError as err:
        return LocatedDocument(data=None, problems=[_syntax_problem(err, text)])
    except TooLarge as err:
        line, col = _position(err.mark)
        return LocatedDocument(data=None, problems=[Problem(
            line, col, None, f"the YAML stands for more than {MAX_VALUES} values once its "
                             "aliases are expanded: too large for a workflow spec")])
    except RecursionError:
        return LocatedDocument(data=None, problems=[Problem(
            None, None, None, "the YAML is nested too deeply to be a workflow spec")])
