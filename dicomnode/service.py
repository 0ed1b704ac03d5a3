"""The running node: wires storage, the SCP, the scheduler and the heartbeat; stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from dicomnode import __version__, heartbeat, logs, systemd
from dicomnode.config import Config
from dicomnode.receive import StoreSCP
from storage.db import open_db
from storage.filestore import FileStore, reconcile

log = logs.get("dicomnode.service")


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_path
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = open_db(self.data_dir / "dicomnode.db")
        self.store = FileStore(self.data_dir, fsync=cfg.node.fsync)
        self.scp = StoreSCP(cfg, self.engine, self.store)
        self.scheduler: Any = None
        self.stopping = threading.Event()
        self.started = time.time()

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "started": self.started, "ae_title": self.cfg.node.ae_title,
                "host": self.cfg.node.host, "port": self.cfg.node.port, "version": __version__,
                "model": getattr(self.scheduler, "model_version", None)}

    def start(self) -> None:
        fixed = reconcile(self.store, self.engine)
        if any(fixed.values()):
            log.warning("store reconciled", **fixed)
        from dicomnode.scheduler import Scheduler  # late: it loads the models

        self.scheduler = Scheduler(self.cfg, self.engine, self.store)
        self.scheduler.start()
        self.scp.start()
        if self.cfg.node.metrics_port:
            from dicomnode.httpd import serve_metrics

            serve_metrics(self.cfg.node.metrics_port, self)
        heartbeat.write(self.data_dir, self._info())
        systemd.notify("READY=1\nSTATUS=listening")

    def stop(self) -> None:
        self.stopping.set()
        systemd.notify("STOPPING=1")
        self.scp.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        heartbeat.write(self.data_dir, dict(self._info(), stopped=True))
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
                heartbeat.write(self.data_dir, self._info())
                if wd:
                    systemd.notify("WATCHDOG=1")
        finally:
            self.stop()
