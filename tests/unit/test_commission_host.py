"""Which ``Host`` headers the commissioning server takes: its own address, never a name that
another DNS answer could point at it (rebinding)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from edge.commission.server import Commissioning, _host_allowed
from edge.config import SiteConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def state(host: str) -> Commissioning:
    config = SiteConfig.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    return Commissioning(config, str(EXAMPLE), Path("control.sock"), host, 8470)


@pytest.mark.parametrize(
    ("listen", "header", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:8470", True),
        ("127.0.0.1", "localhost:8470", True),
        ("127.0.0.1", "127.0.0.1:8471", False),
        ("127.0.0.1", "127.0.0.1", False),
        ("127.0.0.1", "evil.example:8470", False),
        ("127.0.0.1", "", False),
        ("::1", "[::1]:8470", True),
        ("::1", "[::1]", False),
        ("0.0.0.0", "192.168.4.1:8470", True),
        ("0.0.0.0", "[fe80::1]:8470", True),
        ("0.0.0.0", "gateway.local:8470", False),
        ("0.0.0.0", "localhost:8470", False),
        ("192.168.4.1", "192.168.4.1:8470", True),
        ("192.168.4.1", "localhost:8470", False),
    ],
)
def test_host_header(listen: str, header: str, allowed: bool) -> None:
    assert _host_allowed(state(listen), header) is allowed


def test_the_url_names_the_address_listened_on() -> None:
    assert state("127.0.0.1").url.startswith("http://127.0.0.1:8470/?token=")
    assert state("::1").url.startswith("http://[::1]:8470/?token=")
    assert state("127.0.0.1").token != state("127.0.0.1").token, "a fresh token each time"


def test_without_the_extra_it_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge import cli  # noqa: PLC0415

    # As on a gateway's base install: aiohttp cannot be imported.
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    monkeypatch.delitem(sys.modules, "edge.commission.server", raising=False)
    assert cli.main(["commission", "--config", str(EXAMPLE)]) == 2
    out = capsys.readouterr().out
    assert "needs the 'commission' extra (aiohttp is missing)" in out
    assert "pip install 'city-safety-edge[commission]'" in out


def test_a_listen_address_without_a_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from edge import cli  # noqa: PLC0415

    with pytest.raises(SystemExit):
        cli.main(["commission", "--config", str(EXAMPLE), "--listen", "0.0.0.0"])
    assert "expected HOST:PORT" in capsys.readouterr().err
