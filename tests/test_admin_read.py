"""An admin's look (`dicomnode status`, `dicomnode jobs`) never writes: it works on a read-only database file and
leaves the file as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from peers import DICOMNODE

from storage import db
from storage.states import JobState


def unprivileged() -> list[str]:
    """A prefix that runs a command as a user the file modes apply to (root writes read-only files regardless)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop to an unprivileged user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture
def open_dir():
    """A folder another user can reach (pytest's own tmp folders are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-ro-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_status_and_jobs_read_a_read_only_database_without_writing(open_dir: Path):
    tmp_path = open_dir
    data = tmp_path / "var"
    engine = db.open_db(data / "dicomnode.db")
    with engine.begin() as conn:
        now = time.time()
        job = conn.execute(
            db.jobs.insert().values(study_uid="1.2.3", state=JobState.QUEUED.value, created=now, updated=now)
        ).inserted_primary_key[0]
        db.set_job_state(conn, job, JobState.FAILED, "x", reason_code="no_input", reason="no sagittal T2")
    with engine.connect() as conn:  # checkpoint: everything in the main file, as after a clean stop
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    for extra in ("dicomnode.db-wal", "dicomnode.db-shm"):
        (data / extra).unlink(missing_ok=True)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data}"\n')
    cfg.chmod(0o644)
    before = (data / "dicomnode.db").read_bytes()
    names = sorted(p.name for p in data.iterdir())  # the database (and the lock file its creation left)
    os.chmod(data / "dicomnode.db", 0o444)
    os.chmod(data, 0o555)  # not even a journal beside it
    as_user = unprivileged()
    try:
        r = subprocess.run(
            [*as_user, *DICOMNODE, "jobs", "--config", str(cfg), "--json"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert [(j["id"], j["state"], j["reason_code"]) for j in json.loads(r.stdout)] == [(job, "failed", "no_input")]
        r = subprocess.run(
            [*as_user, *DICOMNODE, "status", "--config", str(cfg), "--json"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["jobs"]["failed"] == 1
    finally:
        os.chmod(data, 0o755)
        os.chmod(data / "dicomnode.db", 0o644)
    assert (data / "dicomnode.db").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == names  # no journal, WAL or shared-memory file either
