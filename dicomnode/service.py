"""The running node: wires storage, the SCP, the scheduler and the heartbeat; stops cleanly on SIGTERM.

`[node] role` picks the parts: "all" both, "receiver" the SCP only, "worker" the scheduler only (completion rule,
jobs, sending). Processes of one deployment share the database and data_dir; each beats in the `nodes` table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from dicomnode import __version__, heartbeat, logs, systemd
from dicomnode.config import Config
from dicomnode.receive import StoreSCP
from dicomnode.worker import process_id
from storage import db
from storage.db import open_db
from storage.filestore import FileStore, reconcile

log = logs.get("dicomnode.service")

CHILD_ENV = "DICOMNODE_RECEIVER_OF"  # set in the extra receiver processes: they start no receivers of their own


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by kill -9 (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_path
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = open_db(cfg.database_target)
        self.store = FileStore(self.data_dir, fsync=cfg.node.fsync)
        self.role = cfg.node.role
        self.scp = StoreSCP(cfg, self.engine, self.store) if self.role != "worker" else None
        self.scheduler: Any = None
        self.web: Any = None
        self.stopping = threading.Event()
        self.started = time.time()
        self.id = process_id()
        self.row = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "role": self.role,
            "version": __version__,
            "started": self.started,
        }

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": self.started,
            "ae_title": self.cfg.node.ae_title,
            "host": self.cfg.node.host,
            "port": self.cfg.node.port,
            "version": __version__,
            "model": getattr(self.scheduler, "model_version", None),
        }

    def start(self) -> None:
        if self.scp is not None:  # files a crash left unindexed: the receivers' side of the store
            fixed = reconcile(self.store, self.engine)
            if any(fixed.values()):
                log.warning("store reconciled", **fixed)
        if self.role != "receiver":
            from dicomnode.scheduler import Scheduler  # late: it loads the models

            self.scheduler = Scheduler(self.cfg, self.engine, self.store, owner=self.id)
            self.scheduler.start()
        if self.scp is not None:
            self.scp.start()
        self.children = self._start_receivers()
        if self.cfg.web.port:
            from dicomnode.web import serve_web

            self.web = serve_web(self.cfg, self.engine, self.store)
        if self.cfg.node.metrics_port:
            from dicomnode.httpd import serve_metrics

            serve_metrics(self.cfg.node.metrics_port, self)
        systemd.notify("READY=1\nSTATUS=listening")
        self._beat()
        log.info("node started", role=self.role, node_id=self.id, receivers=1 + len(self.children))

    def _start_receivers(self) -> list[subprocess.Popen[bytes]]:
        """`[node] receivers` - 1 more receiver processes on the same port, each a `serve --role receiver` of the same
        configuration; they die with this process (PR_SET_PDEATHSIG) and are stopped with it."""
        if self.scp is None or self.cfg.node.receivers < 2 or os.environ.get(CHILD_ENV):
            return []
        cmd = [sys.executable, "-m", "dicomnode.cli", "serve", "--role", "receiver"]
        if self.cfg.source:
            cmd += ["--config", self.cfg.source]
        env = dict(os.environ, **{CHILD_ENV: str(os.getpid())})
        return [
            subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            for _ in range(self.cfg.node.receivers - 1)
        ]

    def _beat(self, stopped: bool = False) -> None:
        """The state file (this node, for `status` while the database is away) and the deployment's `nodes` row."""
        heartbeat.write(self.data_dir, dict(self._info(), stopped=True) if stopped else self._info())
        try:
            db.beat(self.engine, self.row, stopped)
        except Exception as exc:  # noqa: BLE001 - the database away for a moment: the next beat comes in 5 s
            log.warning("heartbeat not recorded", error=type(exc).__name__)

    def stop(self) -> None:
        self.stopping.set()
        systemd.notify("STOPPING=1")
        if self.web is not None:
            self.web.should_exit = True
        for child in getattr(self, "children", []):
            child.terminate()
        for child in getattr(self, "children", []):
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.scp is not None:
            self.scp.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self._beat(stopped=True)
        self.engine.dispose()
        log.info("stopped")

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT; the main loop beats the heartbeat and systemd's watchdog."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        self.start()
        wd = systemd.watchdog_interval()
        beat = min(5.0, wd or 5.0)
        try:
            while not self.stopping.wait(beat):
                self._beat()
                if wd:
                    systemd.notify("WATCHDOG=1")
        finally:
            self.stop()
