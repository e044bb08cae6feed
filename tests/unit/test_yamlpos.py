"""The one YAML loader: every key, item and value has its position; bad text gives a
positioned error, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.yamlpos import (
    Document,
    Loc,
    Position,
    YamlError,
    YamlIssue,
    dotted,
    load_yaml,
    read_yaml,
)

FILE = "site.yaml"

TEXT = """\
gateway:
  id: gw-1
  port:   1883
buses:
  - id: lan
    kind: modbus-tcp
  - {id: rtu, kind: modbus-rtu}
on: yes
"""


def error_of(text: str, **limits: int) -> YamlIssue:
    with pytest.raises(YamlError) as caught:
        load_yaml(text, FILE, **limits)
    return caught.value.issue


def test_every_key_item_and_value_has_its_line_and_column() -> None:
    doc = load_yaml(TEXT, FILE)
    assert doc.data == {
        "gateway": {"id": "gw-1", "port": 1883},
        "buses": [{"id": "lan", "kind": "modbus-tcp"}, {"id": "rtu", "kind": "modbus-rtu"}],
        # Keys are names as written; values are YAML's (yes is true).
        "on": True,
    }
    assert doc.places[()] == (1, 1)
    assert doc.places[("gateway",)] == (1, 1)
    assert doc.places[("gateway", "port")] == (3, 3)
    assert doc.values[("gateway", "port")] == (3, 11)
    assert doc.places[("buses", 0)] == (5, 5)
    assert doc.places[("buses", 0, "kind")] == (6, 5)
    assert doc.values[("buses", 0, "kind")] == (6, 11)
    assert doc.places[("buses", 1, "kind")] == (7, 15)
    assert doc.values[("buses", 1, "kind")] == (7, 21)
    assert doc.issues == []


def test_a_place_the_file_lacks_is_placed_at_the_nearest_one_around_it() -> None:
    doc = load_yaml(TEXT, FILE)
    assert doc.position(("buses", 1, "address")) == (7, 5)
    assert doc.line(("nowhere", 3)) == 1
    assert dotted(("buses", 1, "address")) == "buses[1].address"


def test_merged_keys_keep_the_position_where_they_were_written() -> None:
    text = "defaults: &d\n  kind: modbus-tcp\n  port: 502\nbus:\n  <<: *d\n  port: 503\n"
    doc = load_yaml(text, FILE)
    assert doc.data["bus"] == {"port": 503, "kind": "modbus-tcp"}
    assert doc.places[("bus", "kind")] == (2, 3)
    assert doc.places[("bus", "port")] == (6, 3)


def test_values_that_cannot_be_read_are_listed_and_the_rest_is_kept() -> None:
    text = (
        "a: 1\n"
        "a: 2\n"
        "b: !!python/object/apply:os.system ['true']\n"
        "c: &loop [*loop]\n"
        "d: !!int twelve\n"
        "e: ok\n"
        "f: !!int\n"
    )
    doc = load_yaml(text, FILE)
    assert doc.data == {"a": 1, "b": None, "c": [None], "d": None, "e": "ok", "f": None}
    assert [(i.line, i.field) for i in doc.issues] == [
        (2, "a"),
        (3, "b"),
        (4, "c[0]"),
        (5, "d"),
        (7, "f"),
    ]
    assert "duplicate key 'a' (first at line 1)" in doc.issues[0].message
    assert "python/object" in doc.issues[1].message
    assert "alias refers to the mapping or list containing it" in doc.issues[2].message
    assert doc.unreadable == {("b",), ("c", 0), ("d",), ("f",)}
    assert str(doc.issues[0]).startswith(f"{FILE}:2:1: a: duplicate key")


def test_syntax_errors_are_placed_and_explained() -> None:
    issue = error_of("gateway:\n  id: gw-1\n   site: x\n")
    assert (issue.line, issue.field) == (3, "")
    assert issue.message.startswith("YAML syntax error: ")
    assert "check the indentation" in issue.message
    assert re.match(rf"^{FILE}:3:\d+: YAML syntax error", str(issue))
    tab = error_of("gateway:\n\tid: gw-1\n")
    assert (tab.line, tab.column) == (2, 1)
    assert "indent with spaces, not tabs" in tab.message
    assert "(started at line 1)" in error_of("a: [1, 2\n\n").message
    assert "a quote or bracket is not closed" in error_of('a: "x\n').message


def test_characters_yaml_forbids_are_placed() -> None:
    issue = error_of("a: 1\nb: x\x07y\n")
    assert (issue.line, issue.column) == (2, 5)
    assert "U+0007" in issue.message


def test_alias_bombs_and_deep_nesting_stop_at_the_limits() -> None:
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    issue = error_of(bomb)
    assert "expands to more than 100000 values" in issue.message
    assert "too large or too deep" in error_of("a: [[[[1]]]]\n", max_depth=3).message
    assert error_of("a: " + "[" * 5000 + "\n").line == 1


def test_empty_texts_are_empty_documents() -> None:
    for text in ("", "\n\n", "# a comment\n", "~\n", "---\n"):
        doc = load_yaml(text, FILE)
        assert doc.empty
        assert doc.data is None
    assert load_yaml("- a\n", FILE).top == "a list"
    assert load_yaml("hello\n", FILE).top == "the value 'hello'"


def test_files_are_read_as_utf8_and_a_wrong_byte_is_placed(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: caf\xc3\xa9\n")
    assert read_yaml(path).data == {"a": "café"}
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(YamlError) as caught:
        read_yaml(path)
    issue = caught.value.issue
    assert (issue.file, issue.line, issue.column) == (str(path), 2, 7)
    assert "not UTF-8" in issue.message
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------
# Fuzz: whatever the text, a Document whose places all exist, or one positioned YamlError.


def _at(data: Any, loc: Loc) -> None:
    """Walks ``loc`` in ``data``; fails if the place is not there."""
    for part in loc:
        if isinstance(part, int):
            assert isinstance(data, list)
            assert 0 <= part < len(data)
        else:
            assert isinstance(data, dict)
            assert part in data
        data = data[part]


def _check(text: str) -> Document | None:
    lines = text.count("\n") + 1
    try:
        doc = load_yaml(text, FILE, max_values=2_000, max_depth=20)
    except YamlError as exc:
        issue = exc.issue
        assert issue.file == FILE
        assert 1 <= issue.line <= lines + 1
        assert issue.column >= 1
        assert issue.message
        assert str(issue).startswith(f"{FILE}:{issue.line}:{issue.column}: ")
        return None
    for issue in doc.issues:
        assert 1 <= issue.line <= lines + 1
        assert str(issue).startswith(f"{FILE}:{issue.line}:{issue.column}: ")
    for loc, position in [*doc.places.items(), *doc.values.items()]:
        _at(doc.data, loc)
        assert isinstance(position, Position)
        assert 1 <= position.line <= lines + 1
    for loc in doc.unreadable:
        _at(doc.data, loc)
    return doc


_fragments = st.sampled_from(
    [
        "a",
        "b",
        ":",
        ": ",
        "- ",
        "-",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&x ",
        "*x",
        "&y ",
        "*y",
        "<<: ",
        "!!int ",
        "!!python/object ",
        "!t ",
        "? ",
        "|",
        ">",
        "'",
        '"',
        "#",
        "\n",
        "\n  ",
        "\n    ",
        "\t",
        " ",
        "1",
        "1.5",
        "~",
        "yes",
        "2025-13-45",
        "\x07",
        "\ufeff",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_fragments, max_size=40).map("".join))
def test_fuzz_yaml_ish_text_gives_a_document_or_a_positioned_error(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_any_text_gives_a_document_or_a_positioned_error(text: str) -> None:
    _check(text)


_keys = st.text(alphabet="abcon01-_ yes", min_size=1, max_size=6)
_data: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_data, st.sampled_from([None, True]))
def test_dumped_data_reads_back_as_pyyaml_reads_it_with_every_place_known(
    data: Any, flow: bool | None
) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow)
    doc = _check(text)
    assert doc is not None
    assert doc.issues == []
    assert doc.data == yaml.safe_load(text)
    # Every key of every mapping and every item of every list has a place.
    stack: list[tuple[Loc, Any]] = [((), doc.data)]
    while stack:
        loc, value = stack.pop()
        assert loc in doc.places or loc == ()
        if isinstance(value, dict):
            stack.extend(((*loc, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
