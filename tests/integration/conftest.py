"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer import Outbox


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    """A real SQLite outbox in the test's folder, committing every 10 ms."""
    async with await Outbox.open(tmp_path / "outbox.db", commit_interval=0.01) as box:
        yield box
