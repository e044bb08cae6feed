"""The command lines the docs show run as written: every ``edge`` command they name exists, and
docs/rules.md's export-then-replay example works on a real outbox."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from buffer import Outbox
from edge.cli import build_parser
from tests.integration.site import site_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: ``edge NAME`` in a code span, or at the start of a line of a code block (after a prompt).
INLINE = re.compile(r"`(?:sudo )?edge ([a-z][a-z-]*)")
BLOCK = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
IN_BLOCK = re.compile(r"^(?:\$ )?(?:sudo )?edge ([a-z][a-z-]*)", re.MULTILINE)


def named_commands(text: str) -> set[str]:
    names = set(INLINE.findall(text))
    for block in BLOCK.findall(text):
        names |= set(IN_BLOCK.findall(block))
    return names


def subcommands() -> set[str]:
    parser = build_parser()
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def test_every_edge_command_the_docs_name_exists() -> None:
    known = subcommands()
    named = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in DOCS
        for name in named_commands(path.read_text())
    }
    assert {name for _, name in named} >= {"run", "doctor", "buffer", "scan"}, "it finds them"
    assert named_commands("an edge gateway\n```\n$ sudo edge status\n```\n") == {"status"}
    missing = sorted((doc, name) for doc, name in named if name not in known)
    assert not missing, f"docs name edge commands that do not exist: {missing}"


def example_lines(doc: Path, first: str) -> list[str]:
    """The ``$ `` lines of the console block of ``doc`` that contains ``first``."""
    for block in re.findall(r"```console\n(.*?)```", doc.read_text(), re.DOTALL):
        lines = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
        if any(line.startswith(first) for line in lines):
            return lines
    raise AssertionError(f"no console block with {first!r} in {doc}")


async def _fill(path: Path) -> None:
    """Readings of the example site's shop monitor, twice over its 300 mA limit."""
    start = time.time() - 600
    async with await Outbox.open(path, commit_interval=0.05) as outbox:
        for i, value in enumerate([120.0, 150.0, 420.0, 430.0, 180.0] * 4):
            outbox.submit(
                "telemetry",
                {
                    "device": "efm-shop-101",
                    "point": "residual_current",
                    "value": value,
                    "unit": "mA",
                    "ts": start + 10 * i,
                },
            )
        await outbox.flush()


def test_the_export_then_replay_example_of_rules_md_runs_as_written(tmp_path: Path) -> None:
    site = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1", tcp_port=1, rtu_link="/dev/ttyUSB0")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    asyncio.run(_fill(tmp_path / "outbox.sqlite"))
    lines = example_lines(ROOT / "docs" / "rules.md", "edge buffer export")
    outputs = []
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "edge"
        result = subprocess.run(
            [sys.executable, "-m", "edge.cli", *words[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"$ {line}\n{result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 20
    assert "raised" in outputs[-1]
    assert "residual-current-over-limit" in outputs[-1]
    # The --plot example draws the same history: its transitions marked on the monitor's panel.
    (plot_line,) = example_lines(
        ROOT / "docs" / "rules.md", "edge replay --config site.yaml history.jsonl --plot"
    )
    words = shlex.split(plot_line)
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", *words[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"$ {plot_line}\n{result.stdout}{result.stderr}"
    drawing = ElementTree.parse(tmp_path / words[words.index("--plot") + 1]).getroot()
    marks = [g.get("data-kind") for g in drawing.iter() if g.get("class") == "transition"]
    assert marks == [line.split()[1] for line in result.stdout.splitlines()]
    assert "raised" in marks
