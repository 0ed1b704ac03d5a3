"""The running node: wires storage, the SCP, the scheduler and the heartbeat; stops cleanly on SIGTERM.

`[node] role` picks the parts: "all" both, "receiver" the SCP only, "worker" the scheduler only (completion rule,
jobs, sending). Processes of one deployment share the database and data_dir; each beats in the `nodes` table."""

from __future__ import annotations

import contextlib
import os
import select
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


EXTRA_RECEIVER_STOP_SECONDS = 10.0  # an extra receiver told to stop exits by then, finished or not
SHARED_STORE_MIN_AGE = 300.0  # seconds: with a shared database, start-up reconcile leaves younger files to their writer


def _die_with_parent(parent: int) -> None:
    """An extra receiver: SIGTERM when its parent dies, even by kill -9 (Linux prctl PR_SET_PDEATHSIG), set by the
    child itself (a preexec_fn in a threaded parent can deadlock); gone already if the parent died before that."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(0)


class Node:
    def __init__(self, cfg: Config) -> None:
        self.extra_receiver = os.environ.get(CHILD_ENV) is not None
        if self.extra_receiver:  # one more listener on node.port; TLS, web and metrics stay with the parent
            _die_with_parent(int(os.environ[CHILD_ENV]))
            cfg.tls.port, cfg.web.port, cfg.node.metrics_port = 0, 0, 0
        self.cfg = cfg
        self.data_dir = cfg.data_path
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = open_db(cfg.database_target)
        self.store = FileStore(self.data_dir, fsync=cfg.node.fsync)
        self.role = cfg.node.role
        self.scp = StoreSCP(cfg, self.engine, self.store) if self.role != "worker" else None
        self.scheduler: Any = None
        self.web: Any = None
        self.children: list[subprocess.Popen[bytes]] = []
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
        if self.scp is not None and not self.extra_receiver:  # files a crash left unindexed: the receivers' side
            # with a shared database other receivers may be writing into the store now: leave their files alone
            min_age = SHARED_STORE_MIN_AGE if self.cfg.database.url else 0.0
            fixed = reconcile(self.store, self.engine, min_age)
            if any(fixed.values()):
                log.warning("store reconciled", **fixed)
        if self.role != "receiver":
            from dicomnode.scheduler import Scheduler  # late: it loads the models

            self.scheduler = Scheduler(self.cfg, self.engine, self.store, owner=self.id)
            self.scheduler.start()
        if self.scp is not None:
            self.scp.start()
        self.children = [self._spawn_receiver() for _ in range(self._extra_receivers())]
        if self.cfg.web.port:
            from dicomnode.web import serve_web

            self.web = serve_web(self.cfg, self.engine, self.store)
        if self.cfg.node.metrics_port:
            from dicomnode.httpd import serve_metrics

            serve_metrics(self.cfg.node.metrics_port, self)
        systemd.notify("READY=1\nSTATUS=listening")
        self._beat()
        log.info("node started", role=self.role, node_id=self.id, receivers=1 + len(self.children))

    def _extra_receivers(self) -> int:
        """`[node] receivers` - 1 more receiver processes on node.port (plain DICOM; the TLS listener is this one's)."""
        if self.scp is None or self.extra_receiver or self.cfg.node.receivers < 2:
            return 0
        if not self.cfg.source or not self.cfg.tls.plain:
            log.warning("receivers > 1 needs a configuration file and the plain listener; running one", receivers=1)
            return 0
        return self.cfg.node.receivers - 1

    def _spawn_receiver(self) -> subprocess.Popen[bytes]:
        """A `serve --role receiver` of the same configuration file; it dies with this process and is restarted by
        the main loop when it exits."""
        cmd = [sys.executable, "-m", "dicomnode.cli", "serve", "--role", "receiver", "--config", self.cfg.source]
        return subprocess.Popen(cmd, env=dict(os.environ, **{CHILD_ENV: str(os.getpid())}), stdin=subprocess.DEVNULL)

    def _watch_receivers(self) -> None:
        for i, child in enumerate(self.children):
            if child.poll() is not None and not self.stopping.is_set():
                log.warning("receiver process exited; starting another", pid=child.pid, code=child.returncode)
                self.children[i] = self._spawn_receiver()

    def _beat(self, stopped: bool = False) -> None:
        """The state file (the main process's, for `status` while the database is away) and the deployment's `nodes`
        row; neither failing stops the node."""
        try:
            if not self.extra_receiver:
                heartbeat.write(self.data_dir, dict(self._info(), stopped=True) if stopped else self._info())
            db.beat(self.engine, self.row, stopped)
        except Exception as exc:  # noqa: BLE001 - the database away for a moment: the next beat comes in 5 s
            log.warning("heartbeat not recorded", error=type(exc).__name__)

    def stop(self) -> None:
        self.stopping.set()
        systemd.notify("STOPPING=1")
        if self.web is not None:
            self.web.should_exit = True
        for child in self.children:
            child.terminate()
        for child in self.children:
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
        """Block until SIGTERM/SIGINT; the main loop beats the heartbeat and systemd's watchdog.

        The signal handler only notes the signal: a handler that set a threading.Event could run again, for a
        second signal, inside its own `set`, and wait for ever on the lock it holds (a burst of SIGTERMs left
        the node hung, and an orphaned extra receiver holding the port). Python's C handler also writes the
        signal to a pipe (`set_wakeup_fd`), which ends the wait below at once."""
        signals: list[int] = []
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signals.append(signum))
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        self.start()
        wd = systemd.watchdog_interval()
        beat = min(5.0, wd or 5.0)
        try:
            while not signals and not self.stopping.is_set():
                if poller.poll(beat * 1000):
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    continue  # a signal (or another): the loop condition decides
                self._beat()
                self._watch_receivers()
                if wd:
                    systemd.notify("WATCHDOG=1")
        finally:
            if self.extra_receiver:  # nobody would stop an orphan whose shutdown hangs (an association that lingers):
                # what it acknowledged is on disk and indexed already, so after a grace period it simply goes
                deadline = threading.Timer(EXTRA_RECEIVER_STOP_SECONDS, os._exit, (1,))
                deadline.daemon = True  # a clean stop ends the process at once, not after the grace period
                deadline.start()
            self.stop()
