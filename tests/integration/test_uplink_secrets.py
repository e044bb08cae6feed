"""A password never appears in a log line or an error: a failed connect with a wrong password
and a URL carrying credentials, the doctor's report about it, and the errors of a site file
that gets them wrong."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path

import pytest
import yaml

from buffer import Outbox
from edge.config.loader import report_config
from edge.doctor import print_report, run_checks
from edge.uplink import parse_broker_url
from tests.fixtures.broker import Mosquitto, MosquittoFactory
from tests.integration.site import site_dict
from tests.integration.uplink_parts import make_uplink, running

pytestmark = pytest.mark.integration

URL_SECRET = "url-s3cret-7431"
WRONG_SECRET = "wrong-s3cret-9902"
RIGHT = "right-password-5521"
SECRETS = (URL_SECRET, WRONG_SECRET, RIGHT)


def assert_no_secret(text: str) -> None:
    assert text, "nothing to look at"
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in: {text}"


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    return mosquitto_factory(users={"gw": RIGHT})


async def test_a_failed_connect_logs_no_password(
    broker: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mqtt://gw:{URL_SECRET}@{broker.host}:{broker.port}"
    uplink = make_uplink(outbox, url, username="gw", password=WRONG_SECRET)
    # Every logger, paho's and aiomqtt's included, at every level.
    caplog.set_level(logging.DEBUG)
    async with running(uplink):
        deadline = time.monotonic() + 15
        while uplink.tally.attempts < 3:
            if time.monotonic() > deadline:
                pytest.fail("fewer than 3 attempts in 15 s")
            await asyncio.sleep(0.05)
    assert uplink.tally.attempts >= 3
    assert uplink.tally.acked == 0
    assert uplink.last_error is not None
    assert "not authori" in uplink.last_error.lower()
    lines = [r.getMessage() for r in caplog.records]
    lines += [str(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    assert any("next attempt" in line for line in lines)
    assert_no_secret("\n".join([*lines, uplink.last_error, str(uplink.broker)]))


async def test_the_doctors_report_shows_no_password(broker: Mosquitto, tmp_path: Path) -> None:
    site = site_dict(tmp_path, broker_url=broker.url, tcp_port=1, rtu_link=tmp_path / "tty")
    site["uplink"].update(
        brokers=[f"mqtt://gw:{URL_SECRET}@{broker.host}:{broker.port}"],
        username="gw",
        password=WRONG_SECRET,
    )
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    checks = await run_checks(path, user=None, seconds=2)
    broker_check = next(c for c in checks if c.name.startswith("broker "))
    assert broker_check.level == "fail"
    assert "refused the credentials" in broker_check.detail
    out = io.StringIO()
    print_report(checks, out)
    print_report(checks, out, as_json=True)
    assert_no_secret(out.getvalue() + json.dumps([c.name for c in checks]))


@pytest.mark.parametrize(
    "uplink_lines",
    [
        # A URL the model refuses (a path after the host), credentials inside it.
        f"  brokers: ['mqtt://gw:{URL_SECRET}@broker.example:1883/x']\n",
        # A password that is not text.
        "  brokers: [mqtts://broker.example]\n  username: gw\n  password: 55219902\n",
        # A password without a user: the model's own check.
        f"  brokers: [mqtts://broker.example]\n  password: {WRONG_SECRET}\n",
        # Credentials in a valid URL and a password in clear text: warnings.
        f"  brokers: ['mqtt://gw:{URL_SECRET}@b.example']\n  username: gw\n"
        f"  password: {WRONG_SECRET}\n",
    ],
)
def test_site_file_errors_and_warnings_show_no_password(tmp_path: Path, uplink_lines: str) -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / "example-site.yaml").read_text()
    head, _, tail = example.partition("uplink:\n")
    rest = tail[tail.index("  topic_prefix:") :]
    path = tmp_path / "site.yaml"
    path.write_text(f"{head}uplink:\n{uplink_lines}{rest}")
    out = io.StringIO()
    report_config(str(path), out)
    assert "uplink" in out.getvalue(), out.getvalue()
    assert "55219902" not in out.getvalue()
    assert_no_secret(out.getvalue())


def test_a_bad_broker_url_error_shows_no_password() -> None:
    with pytest.raises(ValueError, match="not a broker URL") as caught:
        parse_broker_url(f"http://gw:{URL_SECRET}@broker.example")
    assert_no_secret(str(caught.value))
