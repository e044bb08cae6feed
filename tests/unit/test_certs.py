"""Certificate checks through the real openssl command, on certificates made for each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.certs import check_certificates
from tests.fixtures.certs import write_certificate, write_key


def levels(folder: Path) -> dict[str, str]:
    return {f.file: f.level for f in check_certificates(folder)}


def test_valid_pair_and_ca(tmp_path: Path) -> None:
    key = write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", key)
    write_certificate(tmp_path / "ca.pem", write_key(tmp_path / "unused"), common_name="ca")
    (tmp_path / "unused").unlink()
    assert levels(tmp_path) == {"ca.pem": "ok", "client.pem": "ok", "client.key": "ok"}


def test_expired_certificate_fails_with_its_date_and_a_fix(tmp_path: Path) -> None:
    key = write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", key, days_valid=(-400, -35))
    findings = {f.file: f for f in check_certificates(tmp_path)}
    expired = findings["client.pem"]
    assert expired.level == "fail"
    assert "expired on" in expired.detail
    assert "new certificate" in expired.fix


def test_certificate_expiring_soon_warns(tmp_path: Path) -> None:
    key = write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", key, days_valid=(-300, 10))
    assert levels(tmp_path)["client.pem"] == "warn"


def test_not_yet_valid_points_at_the_clock(tmp_path: Path) -> None:
    key = write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", key, days_valid=(5, 300))
    finding = next(f for f in check_certificates(tmp_path) if f.file == "client.pem")
    assert finding.level == "fail"
    assert "clock" in finding.fix


def test_key_of_another_certificate_is_a_mismatch(tmp_path: Path) -> None:
    write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", write_key(tmp_path / "other.key"))
    (tmp_path / "other.key").unlink()
    finding = next(f for f in check_certificates(tmp_path) if f.file == "client.key")
    assert finding.level == "fail"
    assert "does not belong" in finding.detail


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("client.pem", b"not a certificate\n", "not a readable PEM certificate"),
        ("client.key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "not a readable private key"),
    ],
)
def test_garbage_files_fail_clearly(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    key = write_key(tmp_path / "client.key")
    write_certificate(tmp_path / "client.pem", key)
    (tmp_path / name).write_bytes(content)
    finding = next(f for f in check_certificates(tmp_path) if f.file == name)
    assert finding.level == "fail"
    assert expected in finding.detail


def test_key_without_certificate(tmp_path: Path) -> None:
    write_key(tmp_path / "client.key")
    assert levels(tmp_path) == {"client.key": "fail"}


def test_no_folder_no_findings(tmp_path: Path) -> None:
    assert check_certificates(tmp_path / "absent") == []
