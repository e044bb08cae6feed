"""Every integration test file says so, so `make test-fast` (``-m "not integration"``) never
starts a broker, a simulator or a gateway."""

from __future__ import annotations

import ast
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


def _marks_itself_integration(path: Path) -> bool:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "integration" in ast.unparse(node.value)
        ):
            return True
    return False


def test_every_integration_test_file_is_marked_integration() -> None:
    files = sorted(INTEGRATION.glob("test_*.py"))
    assert len(files) > 20, f"test files not found in {INTEGRATION}"
    unmarked = [path.name for path in files if not _marks_itself_integration(path)]
    assert unmarked == [], "add `pytestmark = pytest.mark.integration` to these"
