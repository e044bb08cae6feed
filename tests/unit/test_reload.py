"""A pushed site config: checked like check-config, written atomically, the old file kept."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus import known_models
from edge.atomic import digest_of
from edge.config import parse_site
from edge.config.model import SiteConfig
from edge.reload import (
    PushRejected,
    check_pushed,
    recover_unsettled,
    restore_previous,
    settled,
    write_site,
)
from tests.integration.site import site_dict


def site(tmp_path: Path) -> dict[str, Any]:
    return site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1883", tcp_port=1502, rtu_link="rtu")


def running(data: dict[str, Any]) -> SiteConfig:
    return parse_site(yaml.safe_dump(data, sort_keys=False), "site.yaml")


def check(params: dict[str, Any], now: SiteConfig) -> Any:
    return check_pushed(params, now, filename="site.yaml", known_models=known_models())


def test_a_valid_site_object_and_its_yaml_text_both_pass(tmp_path: Path) -> None:
    data = site(tmp_path)
    now = running(data)
    assert check({"site": data}, now).config == now
    text = "# the installer's note\n" + yaml.safe_dump(data, sort_keys=False)
    pushed = check({"site_yaml": text}, now)
    assert pushed.text == text  # comments and all


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["devices"][0].update(model="efm-nope"), "devices[0].model: unknown device"),
        (lambda d: d["rules"][0].update(clear_below=400), "clear_below must not be above"),
        (lambda d: d["gateway"].update(id="gw-other"), "gateway.id"),
        (lambda d: d["buffer"].update(path="/elsewhere.sqlite"), "buffer.path"),
        (lambda d: d.update(surprise=1), "surprise: unknown key"),
        (lambda d: d["devices"][0].update(poll_interval=5), "devices[0].poll_interval"),
    ],
)
def test_a_bad_site_is_refused_naming_the_field(tmp_path: Path, change: Any, message: str) -> None:
    data = site(tmp_path)
    now = running(data)
    bad = copy.deepcopy(data)
    change(bad)
    with pytest.raises(PushRejected) as refused:
        check({"site": bad}, now)
    assert any(message in error for error in refused.value.errors), refused.value.errors
    assert "line " not in str(refused.value)  # no lines of a file the platform never saw


def test_yaml_text_errors_name_their_line(tmp_path: Path) -> None:
    now = running(site(tmp_path))
    with pytest.raises(PushRejected, match=r"line 3: YAML syntax error.* \(started at line 2\)"):
        check({"site_yaml": "gateway:\n  id: [gw\n"}, now)
    with pytest.raises(PushRejected, match="exactly one"):
        check({}, now)
    with pytest.raises(PushRejected, match="must be an object"):
        check({"site": [1]}, now)
    # A check, not an assert: it holds under the service's python -OO too.
    not_text: list[Any] = [42, ["gateway:"], {"gateway": {}}]
    for value in not_text:
        with pytest.raises(PushRejected, match="site_yaml must be the file's text"):
            check({"site_yaml": value}, now)


def test_the_site_file_is_replaced_whole_and_the_old_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("old: 1\n")
    os.chmod(path, 0o640)
    previous = write_site(path, "new: 2\n")
    assert (path.read_text(), previous.read_text()) == ("new: 2\n", "old: 1\n")
    assert previous.name == "site.yaml.previous"
    assert path.stat().st_mode & 0o777 == 0o640  # the installer's permissions stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml", "site.yaml.previous"]
    restore_previous(path)
    assert path.read_text() == "old: 1\n"


def test_a_write_that_fails_leaves_the_site_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("old: 1\n")

    def disk_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("edge.atomic.os.fsync", disk_error)
    with pytest.raises(OSError, match="Input/output"):
        write_site(path, "new: 2\n")
    assert path.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]  # no temporary left


def test_a_push_that_never_settled_is_undone_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("old: 1\n")
    pending = {"config_hash": digest_of(b"new: 2\n"), "command_id": "push-9"}
    write_site(path, "new: 2\n", pending=pending)
    assert (tmp_path / "site.yaml.pending").exists()
    # The power was cut within the settle time: the next start finds the marker.
    assert recover_unsettled(path) == pending
    assert path.read_text() == "old: 1\n"
    assert not (tmp_path / "site.yaml.pending").exists()
    assert recover_unsettled(path) is None  # once


def test_a_settled_or_edited_site_file_is_left_alone_at_start(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("old: 1\n")
    write_site(path, "new: 2\n", pending={"config_hash": digest_of(b"new: 2\n")})
    settled(path)
    assert recover_unsettled(path) is None
    assert path.read_text() == "new: 2\n"
    write_site(path, "newer: 3\n", pending={"config_hash": digest_of(b"newer: 3\n")})
    path.write_text("edited: 4\n")  # an installer's edit since: theirs wins
    assert recover_unsettled(path) is None
    assert path.read_text() == "edited: 4\n"
    assert not (tmp_path / "site.yaml.pending").exists()
