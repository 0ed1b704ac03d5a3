"""The service's own state file, so `dicomnode status` can tell up from down without talking DICOM."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STALE_AFTER = 30.0


def path(data_dir: Path) -> Path:
    return data_dir / "node.json"


def write(data_dir: Path, info: dict[str, Any]) -> None:
    p = path(data_dir)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")  # each process its own: several may share a data_dir
    tmp.write_text(json.dumps(dict(info, heartbeat=time.time())))
    os.replace(tmp, p)


def read(data_dir: Path) -> dict[str, Any]:
    """{'up': bool, ...} from the state file; up only when its pid lives and the heartbeat is fresh."""
    p = path(data_dir)
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return {"up": False}
    alive = True
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except (OSError, ValueError):
        alive = False
    info["up"] = alive and time.time() - float(info.get("heartbeat", 0)) < STALE_AFTER and not info.get("stopped")
    return info
