"""YAML with positions: the one loader of the site file, the device models and the scenarios.

Every file an installer or a rig engineer writes is read here, so the answer to "which line is
wrong?" is the same everywhere. The text is composed into PyYAML's node tree (safe tags only)
and built into plain data by hand, so that every mapping key, every list item and every value
keeps its ``(line, column)``. Keys are kept as written: ``on``, ``yes`` or ``1`` are names
here, not booleans or numbers.

What cannot be turned into data at all (a syntax error, a character YAML forbids, an alias
bomb, nesting past the limit) raises :class:`YamlError` with one positioned issue. Values that
cannot be read (an unsafe or unknown tag, a duplicate key, an alias inside itself) do not stop
the reading: they are listed in :attr:`Document.issues`, their place holds ``None``, and the
caller reports them with its own mistakes, all at once. Nothing else escapes: the fuzz test in
``tests/unit/test_yamlpos.py`` holds the loader to that.

It lives in ``drivers/`` because the device models are read by the drivers, which import
nothing from ``edge/``; the site file (``edge.config``) and the scenarios (``hil.scenario``)
import it from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from drivers.positions import Position, YamlIssue

__all__ = [
    "Document",
    "Loc",
    "Position",
    "YamlError",
    "YamlIssue",
    "decode",
    "dotted",
    "load_yaml",
    "read_yaml",
]

#: A place in the data: ``("devices", 1, "address")``.
Loc = tuple[str | int, ...]

#: Upper bound on the values one file may expand to (anchors and aliases can multiply them).
MAX_VALUES: Final = 100_000
#: Deepest nesting accepted; a real site file needs about six levels.
MAX_DEPTH: Final = 64

_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_NULL_TAG: Final = "tag:yaml.org,2002:null"


class YamlError(Exception):
    """The text cannot be turned into data at all; ``issue`` says where and why."""

    def __init__(self, issue: YamlIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue


@dataclass
class Document:
    """A file read into plain data, with the position of everything in it."""

    file: str
    #: Dicts (``str`` keys), lists and scalars; ``None`` for an empty file.
    data: Any
    #: Where each entry starts: a mapping entry at its key, a list item at the item. ``()`` is
    #: the top of the document.
    places: dict[Loc, Position] = field(default_factory=dict)
    #: Where each value starts (for a mapping entry: after its key).
    values: dict[Loc, Position] = field(default_factory=dict)
    #: Values that could not be read; each place holds ``None`` in ``data``.
    issues: list[YamlIssue] = field(default_factory=list)
    #: The places of those values (and of whatever is inside them).
    unreadable: set[Loc] = field(default_factory=set)
    #: The top node in a few words (``a mapping``, ``a list``, ``the value 'x'``).
    top: str = "an empty value"

    @property
    def empty(self) -> bool:
        """Whether the file holds nothing (no text, only comments, or a lone ``~``)."""
        return self.data is None and not self.issues

    def position(self, loc: Loc) -> Position:
        """The position of ``loc``, or of the nearest place around it that the file has."""
        for end in range(len(loc), -1, -1):
            found = self.places.get(loc[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def line(self, loc: Loc) -> int:
        """:meth:`position`'s line."""
        return self.position(loc).line


def dotted(loc: Loc) -> str:
    """``("devices", 1, "address")`` -> ``devices[1].address``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def decode(raw: bytes, file: str) -> str:
    """The text of a file's bytes (UTF-8, with or without a byte-order mark); a byte that is
    not UTF-8 is a :class:`YamlError` at its line and column."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"
        raise YamlError(YamlIssue(file, line, column, "", message)) from None


def read_yaml(
    path: str | os.PathLike[str], *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH
) -> Document:
    """:func:`load_yaml` of the file at ``path``; ``OSError`` when it cannot be read."""
    file = os.fspath(path)
    return load_yaml(
        decode(Path(path).read_bytes(), file), file, max_values=max_values, max_depth=max_depth
    )


def load_yaml(
    text: str, file: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH
) -> Document:
    """Read ``text`` (``file`` names it in the issues) into a :class:`Document`.

    Raises :class:`YamlError` when the text is not YAML at all or goes past ``max_values``
    values (aliases included) or ``max_depth`` levels.
    """
    return _Builder(file, max_values, max_depth).document(text)


#: Plain words for the YAML parser's most frequent complaints.
_SYNTAX_HINTS: Final = (
    ("expected <block end>", "check the indentation of this line against the lines above"),
    (
        "mapping values are not allowed here",
        "check the indentation of this line, or quote a value that contains ': '",
    ),
    ("found character '\\t'", "indent with spaces, not tabs"),
    ("found unexpected end of stream", "a quote or bracket is not closed"),
)


def _position(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the value {str(node.value)!r}" if node.value else "an empty value"


class _Abort(Exception):
    """Stops the building; carries the one issue :class:`YamlError` reports."""

    def __init__(self, issue: YamlIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue


class _Builder:
    """Turns YAML text into plain data, remembering where each key, item and value came from."""

    def __init__(self, file: str, max_values: int, max_depth: int) -> None:
        self.file = file
        self.max_values = max_values
        self.max_depth = max_depth
        self.doc = Document(file, None)
        self._budget = max_values
        #: Collections being built: an alias back into one of them would never end.
        self._active: set[int] = set()
        self._loader: yaml.SafeLoader | None = None

    def abort(self, position: Position, message: str) -> _Abort:
        return _Abort(YamlIssue(self.file, position.line, position.column, "", message))

    def issue(self, node: Node, loc: Loc, message: str) -> None:
        line, column = _position(node)
        self.doc.issues.append(YamlIssue(self.file, line, column, dotted(loc), message))

    def document(self, text: str) -> Document:
        try:
            return self._document(text)
        except _Abort as abort:
            raise YamlError(abort.issue) from None

    def _document(self, text: str) -> Document:
        try:
            # The reader checks the characters as soon as the loader is made.
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:
            raise self._reader_error(text, exc) from None
        try:
            root = self._compose(loader, text)
            if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
                return self.doc
            self.doc.top = _node_kind(root)
            self.doc.places[()] = self.doc.values[()] = _position(root)
            self._loader = loader
            self.doc.data = self._build(root, (), 0)
            return self.doc
        finally:
            self._loader = None
            loader.dispose()

    def _compose(self, loader: yaml.SafeLoader, text: str) -> Node | None:
        try:
            return loader.get_single_node()
        except yaml.reader.ReaderError as exc:
            raise self._reader_error(text, exc) from None
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(exc) from None
        except yaml.YAMLError as exc:
            raise self.abort(Position(1, 1), f"YAML syntax error: {exc}") from None
        except RecursionError:
            raise self.abort(Position(1, 1), self._too_deep()) from None

    def _too_deep(self) -> str:
        return f"too large or too deep: the file is nested more than {self.max_depth} levels"

    def _reader_error(self, text: str, exc: yaml.reader.ReaderError) -> _Abort:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        character = exc.character
        shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
        return self.abort(
            Position(line, column),
            f"character {shown} is not allowed in a YAML file ({exc.reason})",
        )

    def _syntax_error(self, exc: yaml.MarkedYAMLError) -> _Abort:
        mark = exc.problem_mark or exc.context_mark
        where = Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)
        parts = [part for part in (exc.context, exc.problem) if part]
        problem = "; ".join(parts) if parts else "not valid YAML"
        if (
            exc.context
            and exc.context_mark is not None
            and exc.problem_mark is not None
            and exc.context_mark.line != exc.problem_mark.line
        ):
            problem += f" (started at line {exc.context_mark.line + 1})"
        for clue, hint in _SYNTAX_HINTS:
            if clue in problem:
                problem += f"; {hint}"
                break
        return self.abort(where, f"YAML syntax error: {problem}")

    def _build(self, node: Node, loc: Loc, depth: int) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise self.abort(
                _position(node),
                f"too large or too deep: the file expands to more than {self.max_values} "
                "values (aliases of aliases?)",
            )
        if depth > self.max_depth:
            raise self.abort(_position(node), self._too_deep())
        self.doc.values.setdefault(loc, _position(node))
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self._active:
            self.issue(node, loc, "an alias refers to the mapping or list containing it")
            self.doc.unreadable.add(loc)
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, loc, depth)
            if isinstance(node, MappingNode):
                return self._mapping(node, loc, depth)
        finally:
            self._active.discard(id(node))
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        if self._loader is None:
            raise RuntimeError("a YAML scalar is built outside its document")
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or "cannot read this value"
        # PyYAML's constructors fail in many ways on odd input (an empty ``!!int`` is an
        # IndexError): each is this value's mistake, never the loader's crash.
        except (yaml.YAMLError, ValueError, TypeError, ArithmeticError, LookupError) as exc:
            problem = f"cannot read {node.value!r}: {exc}"
        self.issue(node, loc, problem)
        self.doc.unreadable.add(loc)
        return None

    def _sequence(self, node: SequenceNode, loc: Loc, depth: int) -> list[Any] | None:
        if node.tag != _SEQ_TAG:
            self._unsupported(node, loc, "a list")
            return None
        items: list[Any] = []
        for index, child in enumerate(node.value):
            child_loc = (*loc, index)
            self.doc.places[child_loc] = _position(child)
            items.append(self._build(child, child_loc, depth + 1))
        return items

    def _mapping(self, node: MappingNode, loc: Loc, depth: int) -> dict[str, Any] | None:
        if node.tag != _MAP_TAG:
            self._unsupported(node, loc, "a mapping")
            return None
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.issue(key_node, loc, f"a key must be plain text, not {_node_kind(key_node)}")
                continue
            key = str(key_node.value)
            key_loc = (*loc, key)
            if key in result:
                first_line = self.doc.places[key_loc].line
                self.issue(
                    key_node,
                    key_loc,
                    f"duplicate key '{key}' (first at line {first_line}); "
                    "YAML would silently keep only the last one",
                )
                continue
            self.doc.places[key_loc] = _position(key_node)
            result[key] = self._build(value_node, key_loc, depth + 1)
        for merge in merges:
            self._merge(result, merge, loc, depth)
        return result

    def _unsupported(self, node: Node, loc: Loc, kind: str) -> None:
        """A tag other than YAML's own (``!!python/object/apply:...``) is never followed: the
        value is refused whole rather than read as if the tag were not there."""
        self.issue(node, loc, f"unsupported tag {node.tag!r} on {kind}")
        self.doc.unreadable.add(loc)

    def _merge(self, result: dict[str, Any], merge: Node, loc: Loc, depth: int) -> None:
        """YAML merge keys (``<<: *defaults``): keys written in the mapping itself win; merged
        entries keep the positions of the mapping they were written in."""
        sources = merge.value if isinstance(merge, SequenceNode) else [merge]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.issue(merge, loc, "'<<' needs a mapping or a list of mappings")
                continue
            outer = self.doc.places, self.doc.values
            self.doc.places, self.doc.values = {}, {}
            try:
                merged = self._build(source, loc, depth + 1)
                inner = self.doc.places, self.doc.values
            finally:
                self.doc.places, self.doc.values = outer
            if not isinstance(merged, dict):
                continue
            for key, value in merged.items():
                if key in result:
                    continue
                result[key] = value
                prefix = (*loc, key)
                for mine, theirs in zip(outer, inner, strict=True):
                    _adopt(mine, theirs, prefix)


def _adopt(mine: dict[Loc, Position], theirs: Mapping[Loc, Position], prefix: Loc) -> None:
    for place, position in theirs.items():
        if place[: len(prefix)] == prefix:
            mine.setdefault(place, position)
