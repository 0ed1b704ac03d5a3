"""Receiving from real peers: DCMTK storescu/echoscu and Orthanc."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from dicomgen import ALL_SYNTAXES, SeriesSpec, write_in_syntax, write_series
from peers import DCMTK_ENV, DICOMNODE, echo_ok, storescu, successes
from pydicom.uid import generate_uid

pytestmark = pytest.mark.peers


def db_rows(node, sql: str) -> list[tuple]:
    con = sqlite3.connect(node.data_dir / "dicomnode.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta group: what must survive byte for byte."""
    raw = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_len = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    return raw[meta_len:]


def test_echo_from_dcmtk_and_from_our_cli(node_factory):
    node = node_factory().start()
    r = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert r.returncode == 0
    r = subprocess.run(
        [*DICOMNODE, "echo", f"DICOMNODE@127.0.0.1:{node.port}"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_transfer_syntax_is_stored_byte_exact(node_factory, tmp_path: Path):
    node = node_factory().start()
    study = generate_uid()
    files = [write_in_syntax(tmp_path / f"ts{i}.dcm", ts, study) for i, ts in enumerate(ALL_SYNTAXES)]
    flags = ["-xi", "-xe", "-xd", "-xy", "-xx", "-xs", "-xt", "-xv", "-xr"]  # storescu's flag per syntax
    for f, flag in zip(files, flags, strict=True):  # one association per file, proposing that file's own syntax
        r = storescu(node.port, [f], extra=[flag])
        assert successes(r.stdout + r.stderr) == 1, (f, r.stdout + r.stderr)
    rows = dict(db_rows(node, "select sop_instance_uid, path from instances"))
    assert len(rows) == len(files)
    for f in files:
        sent = pydicom.dcmread(f, stop_before_pixels=True)
        stored = node.data_dir / rows[str(sent.SOPInstanceUID)]
        assert (
            pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == sent.file_meta.TransferSyntaxUID
        )
        assert dataset_bytes(stored) == dataset_bytes(f), f"{sent.file_meta.TransferSyntaxUID.name} re-encoded"


def test_same_instance_twice_is_one_stored_copy(node_factory, tmp_path: Path):
    node = node_factory().start()
    files = write_series(tmp_path / "s", SeriesSpec(slices=3), generate_uid())
    for _ in range(2):
        r = storescu(node.port, files)
        assert successes(r.stdout + r.stderr) == 3
    assert db_rows(node, "select count(*) from instances") == [(3,)]
    assert len(list((node.data_dir / "studies").rglob("*.dcm"))) == 3
    assert db_rows(node, "select instances, outcome from associations order by id") == [(3, "released")] * 2


def test_allow_list_rejects_unknown_callers(node_factory, tmp_path: Path):
    node = node_factory(security={"allowed_callers": ["GOODAE", "PACS@127.0.0.1", "NETAE@10.0.0.0/8"]}).start()
    files = write_series(tmp_path / "s", SeriesSpec(slices=1), generate_uid())
    assert successes((lambda r: r.stdout + r.stderr)(storescu(node.port, files, aet="GOODAE"))) == 1
    assert successes((lambda r: r.stdout + r.stderr)(storescu(node.port, files, aet="PACS"))) == 1
    for bad in ("EVIL", "NETAE"):  # NETAE is allowed only from 10/8
        r = storescu(node.port, files, aet=bad)
        assert r.returncode != 0 and "Association Rejected" in r.stdout + r.stderr
    outcomes = db_rows(node, "select calling_ae, outcome from associations order by id")
    assert ("EVIL", "rejected") in outcomes and ("NETAE", "rejected") in outcomes


def test_low_disk_answers_out_of_resources_but_still_echoes(node_factory, tmp_path: Path):
    node = node_factory(node={"min_free_bytes": 10**18}).start()
    files = write_series(tmp_path / "s", SeriesSpec(slices=1), generate_uid())
    r = storescu(node.port, files)
    assert "Refused: OutOfResources" in r.stdout + r.stderr and successes(r.stdout + r.stderr) == 0  # 0xA700
    assert db_rows(node, "select count(*) from instances") == [(0,)]
    assert echo_ok(node.port)


def test_unreadable_dataset_is_refused_not_stored(node_factory, tmp_path: Path):
    node = node_factory().start()
    f = write_series(tmp_path / "s", SeriesSpec(slices=1), generate_uid())[0]
    ds = pydicom.dcmread(f)
    del ds.StudyInstanceUID
    ds.save_as(f)
    r = storescu(node.port, [f])
    assert successes(r.stdout + r.stderr) == 0
    assert db_rows(node, "select count(*) from instances") == [(0,)]
    r = storescu(node.port, write_series(tmp_path / "t", SeriesSpec(slices=1), generate_uid()))
    assert successes(r.stdout + r.stderr) == 1  # the service is still up


def test_associations_logged_without_patient_data(node_factory, tmp_path: Path):
    node = node_factory().start()
    files = write_series(tmp_path / "s", SeriesSpec(slices=2), generate_uid(), patient_name="Zyxwvut^Qwertz")
    storescu(node.port, files)
    node.stop()
    text = node.log.read_text()
    assert "Zyxwvut" not in text and "TEST0001" not in text and "19700101" not in text
    closed = [line for line in node.log_lines() if line.get("event") == "association closed"]
    assert closed and closed[-1]["instances"] == 2 and closed[-1]["calling_ae"] == "STORESCU"


def test_orthanc_pushes_a_study_to_the_node(node_factory, orthanc_factory, tmp_path: Path):
    node = node_factory().start()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node.port}})
    study = generate_uid()
    files = write_series(tmp_path / "a", SeriesSpec(slices=4), study)
    files += write_series(tmp_path / "b", SeriesSpec(slices=3, plane="ax", series_number=2), study)
    orthanc_id = pacs.upload(files)[0]
    pacs.post("/modalities/node/store", {"Resources": [orthanc_id], "Synchronous": True})
    assert db_rows(node, "select count(*), count(distinct series_uid) from instances") == [(7, 2)]
    assert db_rows(node, "select calling_ae from associations") == [("ORTHANC",)]


def test_status_json_contract_while_running_and_stopped(node_factory, tmp_path: Path):
    import json

    node = node_factory().start()
    storescu(node.port, write_series(tmp_path / "s", SeriesSpec(slices=2), generate_uid()))

    def status() -> dict:
        r = subprocess.run(
            [*DICOMNODE, "status", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # stdout holds only the JSON

    up = status()
    assert up["service"]["up"] is True and up["instances"] == 2 and up["studies"] == 1
    assert isinstance(up["jobs"], dict) and up["disk_free_bytes"] > 0
    node.stop()
    down = status()
    assert down["service"]["up"] is False and down["instances"] == 2


def test_two_associations_racing_for_the_last_pooled_connection_both_store(tmp_path: Path):
    """The interleaving that lost instances: this association sees a free pooled connection, another takes it before
    this one does. Replayed deterministically with a pool that is emptied between the look and the take; the store
    must still succeed (before the fix it answered 0xA700 for an instance already on disk)."""
    import queue

    from dicomgen import SeriesSpec, write_series
    from peers import free_port, storescu, successes
    from pydicom.uid import generate_uid

    from dicomnode.config import Config
    from dicomnode.receive import StoreSCP
    from storage import db
    from storage.filestore import FileStore

    class Racing(queue.LifoQueue):
        def empty(self) -> bool:  # says "one is free", and the other thread takes it right then
            was_empty = super().empty()
            while not super().empty():
                super().get_nowait()
            return was_empty

    cfg = Config()
    cfg.node.data_dir, cfg.node.host, cfg.node.port = str(tmp_path / "var"), "127.0.0.1", free_port()
    engine = db.open_db(cfg.data_path / "dicomnode.db")
    scp = StoreSCP(cfg, engine, FileStore(cfg.data_path, fsync=False))
    scp._conns = Racing()
    scp.start()
    try:
        files = write_series(tmp_path / "in", SeriesSpec(slices=4), generate_uid())
        r = storescu(cfg.node.port, files)
        assert successes(r.stdout + r.stderr) == 4, r.stdout[-1500:] + r.stderr[-1500:]
    finally:
        scp.stop()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from instances").scalar() == 4
