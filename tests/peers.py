"""Real peers for the tests: the node as a subprocess, Orthanc, DCMTK tools. Every server binds 127.0.0.1
(Orthanc cannot: it gets unusual ports and HTTP remote access off) and is stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")
DICOMNODE = [sys.executable, "-m", "dicomnode.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def toml_value(v: Any) -> str:
    """A TOML literal: JSON's form of strings, numbers and booleans; lists; tables inline."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def write_config(path: Path, data_dir: Path, port: int, **sections: dict[str, Any]) -> Path:
    """TOML from nested dicts; [[destinations]] from a list."""
    node = {"data_dir": str(data_dir), "port": port, "host": "127.0.0.1", "min_free_bytes": 1000}
    node.update(sections.pop("node", {}))
    sched = {"study_quiet_seconds": 3, "series_quiet_seconds": 2, "max_wait_seconds": 60, "poll_seconds": 0.5}
    sched.update(sections.pop("scheduler", {}))
    sections = {"node": node, "scheduler": sched, **sections}
    lines: list[str] = []
    dests = sections.pop("destinations", [])
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for d in dests:
        lines.append("[[destinations]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in d.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProcess:
    """`dicomnode serve` in a subprocess; ready when it logged 'node started' (the DICOM listener logs 'listening'
    before the web page and metrics start: a test that read the page right after that could find it closed)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> NodeProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")  # noqa: SIM115 - the child process writes to it until stopped
        start_at = self.log.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            cwd=ROOT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.log.read_text()[-3000:]}")
            with open(self.log, "rb") as f:
                f.seek(start_at)
                text = f.read()
                if b'"node started"' in text:  # after the listeners, the web page and metrics are all up
                    return self
            time.sleep(0.05)
        raise TimeoutError("node did not start listening")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory_bytes(self, key: str = "VmRSS") -> int:
        """From /proc/PID/status: VmRSS now, VmHWM the peak so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise ValueError(f"no {key} for {self.pid}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


class Postgres:
    """A throwaway PostgreSQL cluster (Debian's `postgresql`): initdb in a temporary folder as an unprivileged user
    (`postgres` when the tests run as root: initdb refuses root), 127.0.0.1 and a free port, stopped by its PID."""

    def __init__(self, root: Path) -> None:
        self.root, self.data, self.port = root, root / "pgdata", free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self, timeout: float = 60) -> Postgres:
        assert PG_BIN is not None, "PostgreSQL is not installed"
        if not self.data.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres", "postgres")
            init = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "dicomnode", "--auth=trust", "-E", "UTF8"]
            subprocess.run(self._as_owner([*init, "--no-sync"]), check=True, capture_output=True, timeout=120)
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the server writes to it until stopped
        cmd = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"]
        self.proc = subprocess.Popen(self._as_owner(cmd), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.connect("postgres").close()
                return self
            except Exception:  # noqa: BLE001 - not accepting connections yet
                if self.proc.poll() is not None:
                    raise RuntimeError((self.root / "postgres.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        raise TimeoutError("PostgreSQL did not start")

    def connect(self, dbname: str) -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="dicomnode", dbname=dbname, autocommit=True)

    def database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://dicomnode@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int:
        """The postmaster's PID, from postmaster.pid (runuser's child when the tests run as root)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)


class Orthanc:
    """Orthanc as the hospital PACS, with the node as a modality."""

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, Any] | None = None,
        check_called_aet: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.check_called_aet = check_called_aet
        self.extra = extra or {}
        self.dir = workdir
        self.aet = aet
        self.http = free_port()
        self.dicom = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": self.check_called_aet,
            "Plugins": [],
            "StableAge": 2,
            "DicomModalities": self.modalities,
            "MaximumPduLength": 131072,
            **self.extra,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(
            ["/usr/sbin/Orthanc", f"--logfile={self.dir / 'orthanc.log'}", str(self.dir / "orthanc.json")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=DCMTK_ENV,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict[str, Any], timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def upload(self, files: list[Path]) -> list[str]:
        return [self.post("/instances", f.read_bytes())["ParentStudy"] for f in files]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def storescu(
    port: int,
    files: list[Path] | Path,
    aet: str = "STORESCU",
    aec: str = "DICOMNODE",
    extra: list[str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    paths = [str(files)] if isinstance(files, Path) else [str(f) for f in files]
    cmd = ["storescu", "-v", "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1", str(port)]
    if isinstance(files, Path) and files.is_dir():
        cmd += ["+sd", "+r"]
    return subprocess.run(cmd + paths, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def echo_ok(port: int) -> bool:
    """DCMTK echoscu to the node: the 'still answers' check after every fault."""
    r = subprocess.run(
        ["echoscu", "-aec", "DICOMNODE", "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV, timeout=60
    )
    return r.returncode == 0


def successes(proc_output: str) -> int:
    return proc_output.count("Received Store Response (Success)")
