"""Reviews without a browser: saved and edited per job and reviewer, the agreement they give (by hand here), the
export `evaluate` reads, the rejection of a result kept locally, the audit trail, and migration 0004 on an older
database. The browser flow with Orthanc is tests/test_review_web.py."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import DICOMNODE
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from stages import UNDO_0004
from test_jobs import FakeAnalyzer, env, events, jobs, queue_study  # noqa: F401 - env is a fixture

from dicomnode import review
from dicomnode.admin import reprocess_study
from dicomnode.reject import RejectError, reject_job
from storage import audit, db
from storage.states import JobState

DISCS = ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]


def done_job(runner, tmp_path: Path, name: str) -> int:
    queue_study(
        runner, write_series(tmp_path / name, SeriesSpec("T2 SAG", slices=5), generate_uid()), time.time() - 1e3
    )
    runner.drain()
    job = jobs(runner.engine)[-1]
    assert job.state == "done", events(runner.engine, job.id)
    return int(job.id)


def save(engine, job_id: int, reviewer: str, form: dict[str, str]) -> int:
    with engine.begin() as conn:
        row = conn.execute(select(db.jobs.c.result).where(db.jobs.c.id == job_id)).one()
        verdicts, shift = review.parse_form(form, review.node_verdicts(row.result))
        return review.save_review(conn, job_id, reviewer, verdicts, shift)


def test_a_review_is_one_per_job_and_reviewer_and_keeps_what_the_node_said(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, runner = env
    job = done_job(runner, tmp_path, "a")
    with engine.connect() as conn:
        node = review.node_verdicts(conn.execute(select(db.jobs.c.result)).scalar())
    assert list(node) == DISCS and node["L4-L5"].call == "protrusion" and node["L3-L4"].call == "normal"
    assert save(engine, job, "dr_a", {"call:L4-L5": "bulge", "chain_shift": "0"}) == 1
    x = node["L5-S1"].x + 6
    corrected = save(  # edited: the first verdicts replaced, the point moved, the chain one level off
        engine, job, "dr_a", {"call:L4-L5": "extrusion", "x:L5-S1": str(x), "chain_shift": "1"}
    )
    assert corrected == 2
    save(engine, job, "dr_b", {})  # agrees with everything
    with engine.connect() as conn:
        reviews = review.reviews_of(conn, job)
    assert sorted(r["reviewer"] for r in reviews) == ["dr_a", "dr_b"]
    mine = next(r for r in reviews if r["reviewer"] == "dr_a")
    assert mine["chain_shift"] == 1 and mine["corrected"] == 2 and len(mine["levels"]) == 6
    l45 = mine["levels"]["L4-L5"]
    assert (l45["node_call"], l45["call"]) == ("protrusion", "extrusion")
    assert mine["levels"]["L5-S1"]["x"] == pytest.approx(x) and mine["levels"]["L5-S1"]["node_x"] == node["L5-S1"].x
    assert [e for e in events(engine, job) if e[0] == "reviewed"][-1][1] == "reviewed by dr_b: 0 of 6 discs corrected"
    for bad, why in (
        ({"call:L4-L5": "herniated"}, "call must be one of"),
        ({"pfirrmann:L4-L5": "7"}, "Pfirrmann 1-5"),
        ({"chain_shift": "2"}, "chain_shift"),
        ({"x:L1-L2": "-3"}, "outside the slice"),
    ):
        with pytest.raises(review.ReviewError, match=why):
            save(engine, job, "dr_a", bad)


def test_the_agreement_per_finding_and_window_is_the_one_counted_by_hand(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, runner = env
    first, second = done_job(runner, tmp_path, "a"), done_job(runner, tmp_path, "b")
    # first: 2 of 6 calls corrected, L1-L2's and L2-L3's stenosis ticked (the fake node has no stenosis head: not
    # counted), Pfirrmann given where the node has none (not counted either); the numbering right
    save(engine, first, "dr_a", {f"call:{d}": "normal" for d in DISCS} | {"call:L3-L4": "bulge", "chain_shift": "0"})
    # second, reviewed 40 days ago: all agreed, the chain one level too low
    save(engine, second, "dr_a", {"chain_shift": "-1"})
    with engine.begin() as conn:
        conn.execute(db.reviews.update().where(db.reviews.c.job_id == second).values(updated=time.time() - 40 * 86400))
        figures = review.agreement(conn, floor=0.9)
    d30, d90 = figures["30d"], figures["90d"]
    assert (d30["reviews"], d30["discs"], d90["reviews"], d90["discs"]) == (1, 6, 2, 12)
    assert d30["call"] == {"n": 6, "agreement": round(4 / 6, 4)}  # L4-L5 protrusion -> normal, L3-L4 -> bulge
    assert d90["call"] == {"n": 12, "agreement": round(10 / 12, 4)}
    assert d30["schmorl"] == {"n": 6, "agreement": 1.0}
    assert d30["pfirrmann"] == {"n": 0, "agreement": None, "within_one": None}
    assert d30["numbering"] == {"n": 1, "agreement": 1.0} and d90["numbering"] == {"n": 2, "agreement": 0.5}
    assert figures["below_floor"] == ["call"]  # 0.67 < 0.9; the others are 1.0 or have no count
    with engine.connect() as conn:
        assert review.agreement(conn)["below_floor"] == []  # no floor configured


def test_the_export_holds_each_reviewed_slice_and_its_discs_renamed_by_the_chain_shift(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, runner = env
    job = done_job(runner, tmp_path, "a")
    done_job(runner, tmp_path, "b")  # not reviewed: not exported
    save(
        engine, job, "dr_a", {"call:L4-L5": "bulge", "pfirrmann:L4-L5": "4", "stenosis:L4-L5": "1", "chain_shift": "1"}
    )
    out = tmp_path / "export"
    with engine.begin() as conn:
        assert review.export(conn, store.root, out) == {"studies": 1, "discs": 5}  # L5-S1 renamed past the chain
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == review.EXPORT_COLUMNS
    assert [r["level"] for r in rows] == DISCS[1:]  # +1: the disc marked T12-L1 is L1-L2, ...
    marked_l45 = next(r for r in rows if r["level"] == "L5-S1")  # what the node marked L4-L5
    assert (marked_l45["call"], marked_l45["pfirrmann"], marked_l45["stenosis"]) == ("bulge", "4", "1")
    assert float(marked_l45["step_px"]) > 0
    with engine.connect() as conn:
        row = conn.execute(select(db.jobs).where(db.jobs.c.id == job)).one()
    image = out / "images" / f"job{job}" / f"{row.series_uid}.dcm"
    assert dcmread(image).SOPInstanceUID == row.sop_instance_uid == rows[0]["sop_instance_uid"]


def test_a_result_kept_locally_is_rejected_at_once_and_only_a_done_one(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, runner = env
    job = done_job(runner, tmp_path, "a")
    assert reject_job(engine, store, job, "dr_a") == "rejected"
    (row,) = jobs(engine)
    assert row.state == "rejected" and row.finished
    note = dcmread(store.results / str(job) / "kos.dcm")
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    refs = {
        r.ReferencedSOPInstanceUID
        for s in note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert refs == {dcmread(store.results / str(job) / f"{k}.dcm").SOPInstanceUID for k in ("sr", "gsps")}
    with pytest.raises(RejectError, match="only a done job"):
        reject_job(engine, store, job, "dr_a")
    assert reprocess_study(cfg, row.study_uid)[0]  # a new revision, as after any final state
    assert [(j.revision, j.state) for j in jobs(engine)] == [(1, "rejected"), (2, "queued")]
    with engine.connect() as conn:
        (entry,) = audit.recent(conn, action="reject")
        assert (entry["username"], entry["job_id"], entry["detail"]) == ("dr_a", job, {"destinations": 0})
        assert conn.execute(select(db.tallies.c.value).where(db.tallies.c.name == "jobs:rejected")).scalar() == 1


def test_the_audit_lists_sign_ins_and_exports_and_names_no_stranger(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, runner = env
    with engine.begin() as conn:
        audit.record(conn, "sign_in", "dr_a")
        audit.record(conn, "sign_in", None, "refused")
        with pytest.raises(ValueError, match="unknown audit action"):
            audit.record(conn, "peek", "dr_a")
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{cfg.data_path}"\n')
    exported = subprocess.run(
        [*DICOMNODE, "reviews", "export", "--out", str(tmp_path / "x"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["studies"] == 0
    r = subprocess.run(
        [*DICOMNODE, "audit", "--json", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(e["action"], e["outcome"], e["username"]) for e in rows][1:] == [
        ("sign_in", "refused", None),
        ("sign_in", "ok", "dr_a"),
    ]
    assert rows[0]["action"] == "export" and rows[0]["username"].startswith("os:")


def test_a_0003_database_gets_the_review_tables_and_the_rejected_tally(tmp_path: Path):
    path = tmp_path / "old.db"
    engine = db.open_db(path)
    with engine.begin() as conn:
        for stmt in (*UNDO_0004, "DELETE FROM tallies WHERE name = 'jobs:rejected'"):
            conn.exec_driver_sql(stmt)
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0003'")
    engine.dispose()
    engine = db.open_db(path)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
        assert conn.execute(select(db.tallies.c.value).where(db.tallies.c.name == "jobs:rejected")).scalar() == 0
        audit.record(conn, "export", "os:root", detail={"studies": 0})
        assert review.agreement(conn)["30d"]["reviews"] == 0


def test_migration_0004_and_a_review_on_postgres(pg_url: str, tmp_path: Path):
    engine = db.open_db(pg_url)
    with engine.begin() as conn:  # back to 0003, with a done job to review
        for stmt in (*UNDO_0004, "DELETE FROM tallies WHERE name = 'jobs:rejected'"):
            conn.exec_driver_sql(stmt)
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0003'")
        job = db.new_job(conn, "1.2.3", 1, "arrived", JobState.DONE)
        levels = [{"level": d, "labels": ["v1"], "x": 100.0, "y": 40.0 + 30 * i} for i, d in enumerate(DISCS)]
        conn.execute(db.jobs.update().where(db.jobs.c.id == job).values(result=json.dumps(levels)))
    engine.dispose()
    engine = db.open_db(pg_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
    assert save(engine, job, "dr_a", {"call:L4-L5": "bulge", "x:L4-L5": "104"}) == 1
    assert save(engine, job, "dr_a", {"call:L4-L5": "protrusion"}) == 1  # edited in place
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM reviews").scalar() == 1
        assert review.agreement(conn)["30d"]["call"] == {"n": 6, "agreement": round(5 / 6, 4)}
        audit.record(conn, "review", "dr_a", job_id=job, detail={"discs": 6, "corrected": 1})
        assert audit.recent(conn)[0]["detail"] == {"corrected": 1, "discs": 6}


def test_a_role_other_than_viewer_or_reviewer_stops_the_node_naming_the_key(tmp_path: Path):
    from dicomnode.config import ConfigError, load_config
    from dicomnode.web import hash_password

    path = tmp_path / "node.toml"
    user = f'{{name = "dr_a", password_hash = "{hash_password("long enough")}", role = "admin"}}'
    path.write_text(f"[web]\nusers = [{user}]\n")
    with pytest.raises(ConfigError, match=r"config\.web\.users\[0\]\.role"):
        load_config(path)
    path.write_text(f"[web]\nusers = [{user.replace('admin', 'reviewer')}]\n[review]\nagreement_floor = 0.8\n")
    cfg = load_config(path)
    assert cfg.web.users[0].role == "reviewer" and cfg.review.agreement_floor == 0.8


def test_the_agreement_gauges_follow_the_figures():
    from prometheus_client import generate_latest

    figures = {
        f"{d}d": {
            "reviews": 3,
            "discs": 18 * k,
            "call": {"n": 18, "agreement": 0.5 * k},
            "schmorl": {"n": 18, "agreement": None},
            "pfirrmann": {"n": 10, "agreement": 0.4, "within_one": 0.9},
            "stenosis": {"n": 18, "agreement": 1.0},
            "numbering": {"n": 3, "agreement": 1.0},
        }
        for k, d in ((1, 30), (2, 90))
    }
    review.set_gauges(figures)
    text = generate_latest().decode()
    assert 'dicomnode_review_agreement{finding="call",window="30d"} 0.5' in text
    assert 'dicomnode_review_agreement{finding="call",window="90d"} 1.0' in text
    assert 'dicomnode_review_agreement{finding="pfirrmann_within_one",window="30d"} 0.9' in text
    assert 'dicomnode_reviewed_discs{window="90d"} 36.0' in text
    assert 'finding="schmorl"' not in text  # no figure: no gauge


def test_a_rejection_note_that_was_not_delivered_fails_the_job_and_retry_sends_the_note_not_the_result(
    env,  # noqa: F811
    tmp_path: Path,
):
    from peers import free_port

    from dicomnode.admin import retry_job
    from dicomnode.config import Destination

    cfg, engine, store, runner = env
    job = done_job(runner, tmp_path, "a")
    with engine.begin() as conn:  # as if the results had reached "pacs", which is now down
        for kind in ("sr", "gsps"):
            ds = dcmread(store.results / str(job) / f"{kind}.dcm")
            conn.execute(
                db.sent_objects.insert().values(
                    job_id=job,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    path=str(store.results / str(job) / f"{kind}.dcm"),
                    destination="pacs",
                    status="sent",
                    attempts=1,
                    updated=time.time(),
                )
            )
    cfg.destinations = [Destination("pacs", ae_title="PACS", host="127.0.0.1", port=free_port())]
    cfg.output.send_retries = 0
    assert reject_job(engine, store, job, "dr_a") == "sending"
    runner.drain()
    (row,) = jobs(engine)
    assert (row.state, row.reason_code) == ("failed", "send_unreachable"), events(engine, job)
    ok, message = retry_job(cfg, job)
    assert ok and "rejection note" in message
    with engine.connect() as conn:
        rows = conn.execute(select(db.sent_objects.c.sop_class_uid, db.sent_objects.c.status)).all()
    assert sorted(r.status for r in rows if r.sop_class_uid.endswith(".88.59")) == ["pending"]
    assert sorted(r.status for r in rows if not r.sop_class_uid.endswith(".88.59")) == ["sent", "sent"]  # not re-run
    assert jobs(engine)[0].state == "sending"
