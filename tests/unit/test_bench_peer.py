"""The peer benchmark's own logic: its install step, its configuration, how it counts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.benchmarks import drivers, peer


def test_counts_every_value_of_the_peers_telemetry_in_either_form() -> None:
    listed = {"efm-01": [{"ts": 1, "values": {"a": 1, "b": 2}}, {"ts": 2, "values": {"a": 3}}]}
    single = {"efm-02": {"ts": 1, "values": {"a": 1, "b": 2, "c": 3}}, "efm-03": []}
    assert peer.peer_readings(json.dumps(listed).encode()) == 3
    assert peer.peer_readings(json.dumps(single).encode()) == 3


def test_the_peer_polls_every_point_of_the_bench_model_as_scaled(tmp_path: Path) -> None:
    models = drivers._bench_model(tmp_path / "models")
    (tmp_path / "venv").mkdir()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "tb_gateway.json").write_text(json.dumps({"thingsboard": {"host": "x"}}))
    (shipped / "logs.json").write_text(json.dumps({"loggers": {"service": {"level": "INFO"}}}))
    config = peer.peer_config(
        tmp_path, models, tcp_port=1502, broker_port=1883, devices=3, interval=1.0,
        shipped=shipped,
    )  # fmt: skip
    modbus = json.loads((config / "modbus.json").read_text())
    slaves = modbus["master"]["slaves"]
    assert [s["unitId"] for s in slaves] == [1, 2, 3]
    assert {s["pollPeriod"] for s in slaves} == {1000}
    model = yaml.safe_load((models / f"{drivers.BENCH_MODEL}.yaml").read_text())
    series = {entry["tag"]: entry for entry in slaves[0]["timeseries"]}
    assert len(series) == len(model["points"]) == 20
    assert series["residual_current"].get("divider") is None  # scale 1
    assert series["temperature_1"]["divider"] == 10
    assert series["temperature_1"]["type"] == "16int"
    assert series["current_a"]["divider"] == 100
    gateway = json.loads((config / "tb_gateway.json").read_text())
    assert gateway["thingsboard"]["port"] == 1883
    assert gateway["storage"]["type"] == "sqlite"
    logs = json.loads((config / "logs.json").read_text())
    assert logs["loggers"]["service"]["level"] == "WARNING"


def test_a_point_type_the_peer_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError, match="f32"):
        peer._peer_point({"name": "x", "address": 0, "type": "f32", "scale": 1})
    assert peer._peer_point({"name": "x", "address": 0, "type": "u16", "scale": 0.3}) == {
        "tag": "x", "type": "16uint", "functionCode": 3, "objectsCount": 1, "address": 0,
        "multiplier": 0.3,
    }  # fmt: skip


def test_an_install_that_fails_is_a_reason_to_skip_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "build" / "peer" / "tb"

    def no_index(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if "pip" in command:
            venv.mkdir(parents=True, exist_ok=True)  # pip had started to write
            raise subprocess.CalledProcessError(
                1, command, stderr="WARNING: retrying\nERROR: No matching distribution found"
            )
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", no_index)
    reason = peer.peer_ready(venv)
    assert reason is not None
    assert "cannot install the peer" in reason
    assert "No matching distribution found" in reason
    assert not venv.exists()


def test_an_installed_peer_is_reused_and_a_changed_pin_installs_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "tb"
    installs: list[list[str]] = []

    def install(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        installs.append(command)
        if "pip" in command:
            peer.peer_binary(venv).parent.mkdir(parents=True, exist_ok=True)
            peer.peer_binary(venv).write_text("#!/bin/sh\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", install)
    assert peer.peer_ready(venv) is None
    assert len(installs) == 2  # venv, pip
    assert peer.peer_ready(venv) is None
    assert len(installs) == 2  # reused
    monkeypatch.setattr(peer, "PEER", ("thingsboard-gateway==0.0.1",))
    assert peer.peer_ready(venv) is None
    assert len(installs) == 4
