"""Kill -9 of the node in the middle of a transfer loses no acknowledged instance and leaves no partial file."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from dicomgen import SeriesSpec, write_series
from peers import DCMTK_ENV, echo_ok, storescu, successes
from pydicom.uid import generate_uid

pytestmark = [pytest.mark.peers, pytest.mark.faults]


def acknowledged(output: str) -> list[str]:
    """Files storescu saw succeed, from its -v log (a 'Sending file' line, later its response)."""
    acked, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


def test_kill9_mid_transfer_then_resend(node_factory, tmp_path: Path):
    files = write_series(tmp_path / "src", SeriesSpec(slices=400, rows=256, cols=256), generate_uid())
    node = node_factory().start()
    cmd = ["storescu", "-v", "-aec", "DICOMNODE", "127.0.0.1", str(node.port), *map(str, files)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    db = node.data_dir / "dicomnode.db"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once a good part, but not all, has arrived
        time.sleep(0.05)
        if db.exists():
            con = sqlite3.connect(db)
            n = con.execute("select count(*) from instances").fetchone()[0]
            con.close()
            if n >= 60:
                break
    node.kill9()
    out, _ = proc.communicate(timeout=60)
    acked = acknowledged(out)
    assert 0 < len(acked) < len(files), "the kill must land mid-transfer"

    node.start()  # restart on the same data: reconcile runs before the SCP listens
    part_files = list((node.data_dir / "tmp").iterdir())
    assert part_files == [], "partial files must not survive a restart"
    con = sqlite3.connect(db)
    stored = {uid: path for uid, path in con.execute("select sop_instance_uid, path from instances")}
    con.close()
    for f in acked:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"acknowledged instance {uid} lost"
    for rel in stored.values():  # every visible file is whole
        ds = pydicom.dcmread(node.data_dir / rel)
        assert len(ds.PixelData) == 256 * 256 * 2

    r = storescu(node.port, files)
    assert successes(r.stdout + r.stderr) == len(files)
    con = sqlite3.connect(db)
    n_rows, n_unique = con.execute("select count(*), count(distinct sop_instance_uid) from instances").fetchone()
    con.close()
    assert n_rows == n_unique == len(files)
    assert len(list((node.data_dir / "studies").rglob("*.dcm"))) == len(files)


def test_database_write_locked_by_another_process(node_factory, tmp_path: Path):
    """Another process holds the database's write lock for 4 s during a transfer: stores wait, nothing is lost."""
    import sys

    files = write_series(tmp_path / "src", SeriesSpec(slices=40, rows=64, cols=64), generate_uid())
    node = node_factory().start()
    db = node.data_dir / "dicomnode.db"
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, time, sys\n"
                f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(4)\n"
                "c.execute('COMMIT')\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout.readline().strip() == "locked"
    t0 = time.time()
    r = storescu(node.port, files)
    locker.wait(30)
    assert successes(r.stdout + r.stderr) == len(files)
    assert time.time() - t0 >= 3  # the stores really waited for the lock
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from instances").fetchone()[0] == len(files)
    con.close()
    assert echo_ok(node.port)


def test_ten_restarts_in_a_row_under_traffic(node_factory, tmp_path: Path):
    """A sender keeps sending while the node is killed and restarted ten times: every acknowledged instance is
    stored once, and afterwards a full resend completes."""
    import threading

    files = write_series(tmp_path / "src", SeriesSpec(slices=120, rows=64, cols=64), generate_uid())
    # the receive path alone (what is killed here): a receiver starts without loading the model, ten times faster
    node = node_factory(node={"role": "receiver"}).start()
    acked: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        while not stop.is_set():
            out = storescu(node.port, files)
            acked.extend(acknowledged(out.stdout + out.stderr))
            time.sleep(0.05)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    for _ in range(10):
        time.sleep(0.4)
        node.kill9()
        node.start()
    stop.set()
    t.join(120)
    assert acked, "some instances must have been acknowledged between restarts"
    con = sqlite3.connect(node.data_dir / "dicomnode.db")
    stored = {uid for (uid,) in con.execute("select sop_instance_uid from instances")}
    con.close()
    for f in set(acked):
        assert str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) in stored
    r = storescu(node.port, files)
    assert successes(r.stdout + r.stderr) == len(files)
    assert list((node.data_dir / "tmp").iterdir()) == []
    assert echo_ok(node.port)
