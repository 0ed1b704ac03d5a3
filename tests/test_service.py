"""The service as systemd runs it: unit verification, READY notification, metrics and health endpoints."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from peers import ROOT, free_port, write_config

from dicomnode import systemd


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path: Path):
    exe = Path(sys.executable).parent / "dicomnode"
    unit = (ROOT / "systemd" / "dicomnode.service").read_text().replace("/opt/dicomnode/.venv/bin/dicomnode", str(exe))
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ProtectSystem=strict" in unit
    (tmp_path / "dicomnode.service").write_text(unit)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "dicomnode.service")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr


def test_sd_notify_sends_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0


def test_serve_notifies_ready_after_listening_and_serves_metrics(tmp_path: Path):
    sock_path = str(tmp_path / "n.sock")
    port, mport = free_port(), free_port()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "var", port, node={"metrics_port": mport})
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(sock_path)
        s.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            assert s.recv(200).startswith(b"READY=1")
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # listening by the time READY arrived
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
            assert "dicomnode_instances_received_total" in body and "dicomnode_jobs" in body
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=10).read())
            assert health["ok"] is True
        finally:
            proc.terminate()
            proc.wait(60)


@pytest.mark.faults
def test_a_burst_of_sigterms_stops_the_node(tmp_path: Path):
    """systemd, an admin and a dying parent may each send SIGTERM: a handler that set a threading.Event ran again
    inside its own `set` and hung the node for ever (most bursts before the fix)."""
    import signal
    import time

    from peers import NodeProcess

    for trial in range(4):
        cfg = write_config(tmp_path / f"n{trial}.toml", tmp_path / f"n{trial}", free_port(), node={"role": "receiver"})
        node = NodeProcess(cfg, tmp_path / f"n{trial}.log").start()
        assert node.proc is not None
        time.sleep(0.3)
        until = time.monotonic() + 3  # signals all through the stop, while it sets its own Events
        while time.monotonic() < until and node.proc.poll() is None:
            try:
                os.kill(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        try:
            status = node.proc.wait(20)
        except subprocess.TimeoutExpired:
            node.kill9()
            pytest.fail(f"burst {trial}: the node did not stop within 20 s")
        # after its clean stop the interpreter's own exit may still be cut short by the next SIGTERM of the burst
        assert status in (0, -signal.SIGTERM) and '"stopped"' in (tmp_path / f"n{trial}.log").read_text()
