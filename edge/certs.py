"""Checks of the gateway's TLS files: expiry, and whether a client key matches its certificate.

The files live in one folder (``/etc/city-safety-edge/certs`` on an installed gateway):

- ``ca.pem``: the certificate authority that signed the district broker's certificate;
- ``client.pem`` and ``client.key``: the gateway's own certificate and key (mutual TLS);
- any other ``*.pem`` or ``*.crt``: checked for expiry as well; a ``NAME.key`` is paired with
  ``NAME.pem`` or ``NAME.crt``.

The ``openssl`` command does the reading (it is on every Raspberry Pi OS and Debian system),
so the gateway needs no cryptography library of its own for these checks.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

__all__ = ["CertFinding", "check_certificates", "check_named_files"]

Level = Literal["ok", "warn", "fail"]

#: A certificate that expires within this many days is a warning: time to order a new one.
EXPIRY_WARNING_DAYS = 30
CERT_SUFFIXES = (".pem", ".crt")
_OPENSSL_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class CertFinding:
    """One checked file: how it stands, what was found and what to do about it."""

    level: Level
    file: str
    detail: str
    fix: str = ""


class OpenSSLError(Exception):
    pass


def _openssl(*args: str) -> str:
    binary = shutil.which("openssl")
    if binary is None:
        raise OpenSSLError("the openssl command is missing (apt-get install openssl)")
    result = subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=_OPENSSL_TIMEOUT,
        check=False,
        # Month names in the dates openssl prints must be English to be parsed.
        env={**os.environ, "LC_ALL": "C"},
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise OpenSSLError(lines[-1] if lines else f"openssl exited with {result.returncode}")
    return result.stdout


def _parse_date(text: str) -> dt.datetime:
    # openssl prints e.g. "Nov 26 08:44:08 2027 GMT" (day padded with a space when < 10).
    return dt.datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=dt.UTC
    )


@dataclass(frozen=True, slots=True)
class Certificate:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    public_key: str


def read_certificate(path: Path) -> Certificate:
    """The first certificate in a PEM file; :class:`OpenSSLError` when it is not one."""
    out = _openssl("x509", "-in", str(path), "-noout", "-subject", "-startdate", "-enddate")
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    public_key = _openssl("x509", "-in", str(path), "-noout", "-pubkey")
    return Certificate(
        subject=values.get("subject", "").strip(),
        not_before=_parse_date(values["notBefore"]),
        not_after=_parse_date(values["notAfter"]),
        public_key=public_key.strip(),
    )


def public_key_of(key: Path) -> str:
    return _openssl("pkey", "-in", str(key), "-pubout").strip()


def check_certificate(
    path: Path, now: dt.datetime, *, warn_days: int = EXPIRY_WARNING_DAYS
) -> tuple[CertFinding, Certificate | None]:
    """Expiry of one certificate file."""
    try:
        cert = read_certificate(path)
    except (OpenSSLError, KeyError, ValueError, OSError, subprocess.SubprocessError) as exc:
        return (
            CertFinding(
                "fail",
                path.name,
                f"not a readable PEM certificate: {exc}",
                f"copy the certificate again as {path.name} "
                "(PEM text starting '-----BEGIN CERTIFICATE-----')",
            ),
            None,
        )
    expires = cert.not_after.strftime("%Y-%m-%d")
    if cert.not_after <= now:
        return (
            CertFinding(
                "fail",
                path.name,
                f"expired on {expires} ({cert.subject})",
                "ask the district platform team for a new certificate and replace this file",
            ),
            cert,
        )
    if cert.not_before > now:
        return (
            CertFinding(
                "fail",
                path.name,
                f"not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC ({cert.subject})",
                "set the gateway's clock (check that NTP works) or use a certificate valid now",
            ),
            cert,
        )
    days = (cert.not_after - now).days
    if days < warn_days:
        return (
            CertFinding(
                "warn",
                path.name,
                f"expires in {days} days, on {expires} ({cert.subject})",
                "order a new certificate from the district platform team before it expires",
            ),
            cert,
        )
    return CertFinding("ok", path.name, f"valid until {expires} ({cert.subject})"), cert


def check_certificates(
    folder: Path, now: dt.datetime | None = None, *, warn_days: int = EXPIRY_WARNING_DAYS
) -> list[CertFinding]:
    """Every certificate in ``folder`` for expiry, and every ``NAME.key`` against its ``NAME``
    certificate. An absent or empty folder gives no findings (TLS files are optional)."""
    now = now or dt.datetime.now(dt.UTC)
    if not folder.is_dir():
        return []
    findings: list[CertFinding] = []
    certs: dict[str, tuple[Path, Certificate | None]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in CERT_SUFFIXES and path.is_file():
            finding, cert = check_certificate(path, now, warn_days=warn_days)
            findings.append(finding)
            certs[path.stem] = (path, cert)
    for key in sorted(folder.glob("*.key")):
        if key.stem not in certs:
            findings.append(
                CertFinding(
                    "fail",
                    key.name,
                    f"a key without a certificate: no {key.stem}.pem or {key.stem}.crt",
                    f"copy the certificate that goes with this key as {key.stem}.pem",
                )
            )
            continue
        path, cert = certs[key.stem]
        if cert is None:
            continue  # the certificate itself was already reported as unreadable
        # Named by its file, as the certificate's own line is.
        findings.append(check_key(key, cert, path.name))
    return findings


def check_key(key: Path, cert: Certificate, what: str) -> CertFinding:
    """Whether private ``key`` belongs to ``cert`` (``what`` names the certificate)."""
    try:
        matches = public_key_of(key) == cert.public_key
    except (OpenSSLError, OSError, subprocess.SubprocessError) as exc:
        return CertFinding(
            "fail",
            key.name,
            f"not a readable private key: {exc}",
            f"copy the key again as {key.name} (PEM text, unencrypted)",
        )
    if matches:
        return CertFinding("ok", key.name, f"matches {what}")
    return CertFinding(
        "fail",
        key.name,
        f"does not belong to {what} (their public keys differ)",
        "copy the key and the certificate issued for it together, from the same order",
    )


def check_named_files(
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    now: dt.datetime | None = None,
    *,
    warn_days: int = EXPIRY_WARNING_DAYS,
) -> list[CertFinding]:
    """The TLS files a site file names (``uplink.ca_file``, ``cert_file``, ``key_file``),
    each under its full path: the files the gateway loads, not a folder's."""
    now = now or dt.datetime.now(dt.UTC)
    findings: list[CertFinding] = []
    client: Certificate | None = None
    for name in (ca_file, cert_file):
        if name:
            finding, cert = check_certificate(Path(name), now, warn_days=warn_days)
            findings.append(replace(finding, file=name))
            if name == cert_file:
                client = cert
    if key_file and cert_file and client is not None:
        findings.append(replace(check_key(Path(key_file), client, cert_file), file=key_file))
    return findings
