"""First boot: files from the boot partition are installed, or refused loudly and kept aside."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from edge.provision import provision, sound_refusal
from tests.fixtures.certs import write_certificate, write_key
from tests.fixtures.command_keys import install as install_command_keys
from tests.integration.site import site_dict

EDGE = [sys.executable, "-m", "edge.cli"]


def valid_site(tmp_path: Path, *, buzzer_pin: int = 17) -> dict[str, Any]:
    site = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1883", tcp_port=502, rtu_link="x")
    site["outputs"]["buzzer"]["pin"] = buzzer_pin
    site["outputs"].pop("led", None)
    return site


def card(tmp_path: Path, site: dict[str, Any] | str, *, certs: bool = True) -> Path:
    """The folder an installer copies onto the boot partition."""
    source = tmp_path / "boot" / "city-safety-edge"
    source.mkdir(parents=True)
    text = site if isinstance(site, str) else yaml.safe_dump(site, sort_keys=False)
    (source / "site.yaml").write_text(text)
    if certs:
        (source / "certs").mkdir()
        key = write_key(source / "certs" / "client.key")
        write_certificate(source / "certs" / "client.pem", key)
        install_command_keys(source / "certs")
    return source


def no_beeps(*args: object, **kwargs: object) -> None:
    raise AssertionError("the buzzer must stay quiet when the files are accepted")


def test_valid_files_are_installed_private_and_removed_from_the_card(tmp_path: Path) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    expected = (source / "site.yaml").read_bytes()
    etc = tmp_path / "etc"
    result = provision(source, etc, refusal=no_beeps)
    assert result.outcome == "installed", result.problems
    assert (etc / "site.yaml").read_bytes() == expected
    assert (etc / "site.yaml").stat().st_mode & 0o777 == 0o600
    assert (etc / "certs").stat().st_mode & 0o777 == 0o700
    assert (etc / "certs" / "client.key").stat().st_mode & 0o777 == 0o600
    # The platform's command keys are installed with the certificates.
    assert (etc / "certs" / "operations-test-a.pub").is_file()
    assert (etc / "certs" / "engineering-test-a.pub").is_file()
    assert not source.exists(), "secrets must not stay on the FAT boot partition"


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("operations-x.pub", "garbage", "not a readable PEM public key"),
        ("root.pub", "garbage", "operations-NAME.pub"),
        ("operations-x.private.pem", "-----BEGIN PRIVATE KEY-----", "not a readable PEM cert"),
    ],
    ids=["unreadable", "unnamed-class", "private-key-on-the-card"],
)
def test_a_command_key_the_gateway_could_not_use_is_refused(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    (source / "certs" / name).write_text(text)
    result = provision(source, tmp_path / "etc", refusal=lambda pin, **kw: None)
    assert result.outcome == "rejected"
    assert any(name in p and needle in p for p in result.problems), result.problems


def test_second_provisioning_keeps_the_previous_generation(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert provision(card(tmp_path, valid_site(tmp_path)), etc, refusal=no_beeps).outcome == (
        "installed"
    )
    first = (etc / "site.yaml").read_bytes()
    site = valid_site(tmp_path)
    site["gateway"]["id"] = "gw-second"
    assert provision(card(tmp_path, site), etc, refusal=no_beeps).outcome == "installed"
    assert (etc / "site.yaml.previous").read_bytes() == first
    assert b"gw-second" in (etc / "site.yaml").read_bytes()
    assert (etc / "certs.previous" / "client.pem").exists()


def test_invalid_site_is_refused_old_config_kept_and_buzzer_beeps_on_its_pin(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc"
    provision(card(tmp_path, valid_site(tmp_path, buzzer_pin=22)), etc, refusal=no_beeps)
    in_force = (etc / "site.yaml").read_bytes()
    bad = valid_site(tmp_path)
    bad["devices"][0]["bus"] = "no-such-bus"
    source = card(tmp_path, bad)
    factory = MockFactory()

    def quick(pin: int, **kwargs: Any) -> None:
        sound_refusal(pin, repeats=2, unit=0.005, **kwargs)

    result = provision(source, etc, pin_factory=factory, refusal=quick)

    assert result.outcome == "rejected"
    assert any("no-such-bus" in p and "site.yaml:" in p for p in result.problems)
    assert (etc / "site.yaml").read_bytes() == in_force, "the config in force must not change"
    rejected = source.with_name("city-safety-edge.rejected")
    assert not source.exists()
    assert "no-such-bus" in (rejected / "REJECTED.txt").read_text()
    assert (rejected / "site.yaml").exists(), "the installer's files stay for inspection"
    # The pattern sounded on the pin of the config in force (22), not the default (17).
    states = [s.state for s in factory.pin(22).states]
    rises = sum(1 for a, b in itertools.pairwise(states) if not a and b)
    assert rises == 2 * 4, f"3 short + 1 long, twice: {states}"
    assert len(factory.pin(17).states) <= 1


def test_refusal_pattern_timing_three_short_one_long() -> None:
    factory = MockFactory()
    sound_refusal(5, pin_factory=factory, repeats=1, unit=0.02)
    states = factory.pin(5).states
    ons = [
        later.timestamp - earlier.timestamp
        for earlier, later in itertools.pairwise(states)
        if earlier.state and not later.state
    ]
    assert len(ons) == 4
    assert max(ons[:3]) < ons[3], "the last beep of the pattern is the long one"


def test_expired_certificate_is_refused_and_default_pin_used_without_config(
    tmp_path: Path,
) -> None:
    source = card(tmp_path, valid_site(tmp_path), certs=False)
    (source / "certs").mkdir()
    key = write_key(source / "certs" / "client.key")
    write_certificate(source / "certs" / "client.pem", key, days_valid=(-400, -1))
    factory = MockFactory()
    calls: list[int] = []
    result = provision(
        source,
        tmp_path / "etc",
        pin_factory=factory,
        default_pin=23,
        refusal=lambda pin, **kw: calls.append(pin),
    )
    assert result.outcome == "rejected"
    assert any("client.pem" in p and "expired" in p for p in result.problems)
    assert calls == [23]
    assert not (tmp_path / "etc" / "site.yaml").exists()


def test_missing_site_file_and_garbage_yaml(tmp_path: Path) -> None:
    source = card(tmp_path, "gateway: [unclosed\n", certs=False)
    result = provision(source, tmp_path / "etc", refusal=lambda pin, **kw: None)
    assert result.outcome == "rejected"
    assert "YAML syntax error" in result.problems[0]


def test_nothing_on_the_card_is_not_an_error(tmp_path: Path) -> None:
    result = provision(tmp_path / "absent", tmp_path / "etc", refusal=no_beeps)
    assert result.outcome == "nothing"


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_command_line_exit_status_and_log(tmp_path: Path, valid: bool) -> None:
    site = valid_site(tmp_path)
    if not valid:
        site["outputs"]["buzzer"]["pin"] = 99
    source = card(tmp_path, site)
    etc = tmp_path / "etc"
    result = subprocess.run(
        [*EDGE, "provision", "--source", str(source), "--etc", str(etc), "--fault-repeats", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        check=False,
    )
    if valid:
        assert result.returncode == 0, result.stderr
        assert "msg=provisioned" in result.stderr
    else:
        assert result.returncode == 1
        assert "outputs.buzzer.pin" in result.stderr
        assert "level=error" in result.stderr
        assert not etc.exists() or not (etc / "site.yaml").exists()


def test_unknown_owner_is_refused_before_touching_the_card(tmp_path: Path) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    result = subprocess.run(
        [
            *EDGE,
            "provision",
            "--source",
            str(source),
            "--etc",
            str(tmp_path / "etc"),
            "--owner",
            "no-such-user-here",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "no user 'no-such-user-here'" in result.stderr
    assert (source / "site.yaml").exists(), "the installer's files stay where they are"
    assert not (tmp_path / "etc").exists()


# --------------------------------------------------------------------------------------------
# Links planted on the card or in the configuration folder (provisioning runs as root)
# --------------------------------------------------------------------------------------------


class Outside:
    """A file outside both folders that a planted link points at: it must stay as it is."""

    def __init__(self, tmp_path: Path, name: str, data: bytes) -> None:
        self.path = tmp_path / "outside" / name
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_bytes(data)
        self.path.chmod(0o640)
        self.data = data
        self.stat = self.path.stat()

    def assert_untouched(self) -> None:
        now = self.path.stat()
        assert self.path.read_bytes() == self.data
        assert now.st_mode == self.stat.st_mode, "not chmod-ed"
        assert now.st_uid == self.stat.st_uid, "not chown-ed"
        assert now.st_mtime_ns == self.stat.st_mtime_ns


def plant(kind: str, path: Path, target: Path) -> None:
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.link(target, path)


def refused_quietly(source: Path, etc: Path) -> tuple[Any, str]:
    result = provision(source, etc, refusal=lambda pin, **kw: None)
    note = (source.with_name("city-safety-edge.rejected") / "REJECTED.txt").read_text()
    return result, note


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
@pytest.mark.parametrize("name", ["site.yaml", "certs/client.key"])
def test_a_link_on_the_card_is_refused_and_what_it_points_at_stays_unread(
    tmp_path: Path, kind: str, name: str
) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    planted = source / name
    # What the link leads to is itself a valid file of the kind expected there.
    outside = Outside(tmp_path, "secret", planted.read_bytes())
    planted.unlink()
    plant(kind, planted, outside.path)
    etc = tmp_path / "etc"
    result, note = refused_quietly(source, etc)
    assert result.outcome == "rejected"
    why = "a symbolic link" if kind == "symlink" else "has 2 hard links"
    (problem,) = result.problems
    assert problem.startswith(f"{source / name}: {why}")
    assert problem in note
    assert not (etc / "site.yaml").exists()
    assert not (etc / "certs").exists()
    outside.assert_untouched()


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
@pytest.mark.parametrize(
    "name", ["site.yaml", "site.yaml.previous", ".site.yaml.new", "site.yaml.pending"]
)
def test_a_link_in_the_configuration_folder_is_refused_and_reported(
    tmp_path: Path, kind: str, name: str
) -> None:
    etc = tmp_path / "etc"
    installed = provision(card(tmp_path, valid_site(tmp_path)), etc, refusal=no_beeps)
    assert installed.outcome == "installed"
    in_force = (etc / "site.yaml").read_bytes()
    outside = Outside(tmp_path, "shadow", b"root:$6$not-yours:19000:0:99999:7:::\n")
    planted = etc / name
    if planted.exists():
        planted.unlink()
    plant(kind, planted, outside.path)  # what the gateway's user could do
    site = valid_site(tmp_path)
    site["gateway"]["id"] = "gw-second"
    source = card(tmp_path / "again", site)
    result, note = refused_quietly(source, etc)
    assert result.outcome == "rejected"
    assert any(str(planted) in p and "remove it" in p for p in result.problems), result.problems
    assert str(planted) in note
    outside.assert_untouched()
    if name != "site.yaml":
        assert (etc / "site.yaml").read_bytes() == in_force, "the config in force stays"
    assert not (source.parent / "city-safety-edge").exists()


def test_a_planted_certificate_folder_link_is_refused(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert provision(card(tmp_path, valid_site(tmp_path)), etc, refusal=no_beeps).outcome == (
        "installed"
    )
    outside = Outside(tmp_path, "keep.key", b"somebody's key")
    (etc / "certs.previous").symlink_to(outside.path.parent)
    (etc / "certs" / "extra.key").symlink_to(outside.path)
    result, _ = refused_quietly(card(tmp_path / "again", valid_site(tmp_path)), etc)
    assert result.outcome == "rejected"
    assert any(str(etc / "certs.previous") in p for p in result.problems)
    assert any(str(etc / "certs" / "extra.key") in p for p in result.problems)
    outside.assert_untouched()
    assert sorted(p.name for p in outside.path.parent.iterdir()) == ["keep.key"]


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_the_refusal_note_is_never_written_through_a_link(tmp_path: Path, kind: str) -> None:
    bad = valid_site(tmp_path)
    bad["outputs"]["buzzer"]["pin"] = 99
    source = card(tmp_path, bad)
    outside = Outside(tmp_path, "bashrc", b"# root's shell settings\n")
    plant(kind, source / "REJECTED.txt", outside.path)
    result, note = refused_quietly(source, tmp_path / "etc")
    assert result.outcome == "rejected"
    assert "outputs.buzzer.pin" in note
    outside.assert_untouched()
    assert outside.path.stat().st_nlink == 1


def test_a_card_folder_that_is_a_link_is_not_read_or_written_into(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "site.yaml").write_text(yaml.safe_dump(valid_site(tmp_path)))
    outside = Outside(tmp_path, "site.yaml", (elsewhere / "site.yaml").read_bytes())
    boot = tmp_path / "boot"
    boot.mkdir()
    source = boot / "city-safety-edge"
    source.symlink_to(elsewhere)
    # A ".rejected" left by an earlier refusal, itself a link to a folder to keep.
    (boot / "city-safety-edge.rejected").symlink_to(outside.path.parent)
    etc = tmp_path / "etc"
    result = provision(source, etc, refusal=lambda pin, **kw: None)
    assert result.outcome == "rejected"
    assert "a link or a file, not a folder" in result.problems[0]
    assert not (etc / "site.yaml").exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["site.yaml"], "no note written there"
    assert (boot / "city-safety-edge.rejected").is_symlink(), "the link itself was renamed"
    outside.assert_untouched()


def test_a_fifo_on_the_card_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    (source / "site.yaml").unlink()
    os.mkfifo(source / "site.yaml")
    result, note = refused_quietly(source, tmp_path / "etc")
    assert result.outcome == "rejected"
    assert "not a regular file" in note


def test_the_command_line_reports_a_planted_link(tmp_path: Path) -> None:
    source = card(tmp_path, valid_site(tmp_path))
    outside = Outside(tmp_path, "secret.key", (source / "certs" / "client.key").read_bytes())
    (source / "certs" / "client.key").unlink()
    (source / "certs" / "client.key").symlink_to(outside.path)
    etc = tmp_path / "etc"
    result = subprocess.run(
        [*EDGE, "provision", "--source", str(source), "--etc", str(etc), "--fault-repeats", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        check=False,
    )
    assert result.returncode == 1
    assert "provisioning refused" in result.stderr
    assert "a symbolic link" in result.stderr
    assert not etc.exists() or not (etc / "certs").exists()
    outside.assert_untouched()


def test_a_configuration_folder_that_is_a_link_is_not_written_into(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    etc = tmp_path / "etc"
    etc.symlink_to(elsewhere)
    result, note = refused_quietly(card(tmp_path, valid_site(tmp_path)), etc)
    assert result.outcome == "rejected"
    assert f"{etc}: a link or a file, not a folder" in note
    assert list(elsewhere.iterdir()) == []
