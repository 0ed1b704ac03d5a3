"""Cost of one completion-rule tick (and the gauges it updates) and of `dicomnode status` as the history grows:
N finished studies (5 indexed instances and a done job each) plus 20 studies arriving now, on SQLite and on
PostgreSQL (a throwaway cluster of Debian's postgresql, started as the tests start it). The cost must follow the
active studies, not the history: the figure at 100k within 2x of the figure at 1k (status: `admin.collect` on the
node's engine, as the web page calls it every 5 s). Prints JSON.

    .venv/bin/python benchmarks/tick.py [--sizes 1000 10000 100000] [--ticks 7] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicomnode.admin import collect  # noqa: E402
from dicomnode.complete import CompletionRule  # noqa: E402
from dicomnode.config import Config  # noqa: E402
from storage import db  # noqa: E402
from storage.filestore import FileStore  # noqa: E402

ACTIVE = 20
INSTANCES = 5


def analyze(engine: Any) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # committed: an ANALYZE rolled back with its transaction leaves no statistics
            conn.exec_driver_sql("ANALYZE")


def fill(engine: Any, finished: int, now: float) -> None:
    """The history as the node leaves it: finished studies, their instances and one done job each."""
    raw = db.connect_raw(engine)
    cur = raw.cursor()
    mark = "?" if engine.dialect.name == "sqlite" else "%s"

    def insert(table: str, columns: str, rows: Any) -> None:
        rows = list(rows)
        marks = ",".join([mark] * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

    old = now - 9e5
    insert(
        "studies",
        "study_uid, first_received, last_received, instances, calling_ae",
        ((f"1.2.{i}", old, old, INSTANCES, "PACS") for i in range(finished)),
    )
    insert(
        "instances",
        "sop_instance_uid, sop_class_uid, study_uid, series_uid, transfer_syntax, path, size, received_at",
        (
            (f"1.2.{i}.{k}", "1.2.840.10008.5.1.4.1.1.4", f"1.2.{i}", f"1.2.{i}.9", "1.2.840.10008.1.2.1", "x", 1, old)
            for i in range(finished)
            for k in range(INSTANCES)
        ),
    )
    insert(
        "jobs",
        "study_uid, revision, state, created, updated, attempts, input_instances, finished",
        ((f"1.2.{i}", 1, "done", old, old, 1, INSTANCES, old) for i in range(finished)),
    )
    insert(
        "studies",
        "study_uid, first_received, last_received, instances, calling_ae",
        ((f"9.9.{i}", now, now, 3, "PACS") for i in range(ACTIVE)),
    )
    raw.commit()
    raw.close()
    analyze(engine)  # statistics, as autovacuum keeps them on a live server


def measure(target: Any, folder: Path, finished: int, ticks: int) -> dict[str, float]:
    cfg = Config()
    cfg.node.data_dir = str(folder)
    engine = db.open_db(target)
    now = time.time()
    fill(engine, finished, now)
    rule = CompletionRule(cfg, engine, FileStore(folder, fsync=False))
    t0 = time.perf_counter()
    rule.tick(now)  # the first tick settles the history (after an upgrade every study starts active)
    first = time.perf_counter() - t0
    analyze(engine)  # it changed every study row: autovacuum would analyse them again
    times = []
    for k in range(ticks):
        t0 = time.perf_counter()
        rule.tick(now + 1 + k)
        times.append(time.perf_counter() - t0)
    status = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        facts = collect(cfg, engine)
        status.append(time.perf_counter() - t0)
    assert facts["studies"] == finished + ACTIVE and facts["jobs"]["done"] == finished, facts
    engine.dispose()
    return {
        "finished_studies": finished,
        "tick_s_median": round(statistics.median(times), 5),
        "tick_s_max": round(max(times), 5),
        "first_tick_s": round(first, 3),
        "status_s_median": round(statistics.median(status), 5),
    }


def series(name: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    base, status_base = runs[0]["tick_s_median"], runs[0]["status_s_median"]
    return {
        "database": name,
        "active_studies": ACTIVE,
        "runs": runs,
        "ratio_largest_to_smallest": round(runs[-1]["tick_s_median"] / base, 2) if base else None,
        "status_ratio_largest_to_smallest": (
            round(runs[-1]["status_s_median"] / status_base, 2) if status_base else None
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--ticks", type=int, default=7)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    out = []
    runs = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(measure(Path(tmp) / "dicomnode.db", Path(tmp), n, args.ticks))
    out.append(series("sqlite", runs))
    if not args.no_postgres:
        from peers import PG_BIN, Postgres

        if PG_BIN is None:
            out.append({"database": "postgresql", "skipped": "PostgreSQL not installed"})
        else:
            server = Postgres(Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))).start()
            try:
                runs = []
                for n in args.sizes:
                    with tempfile.TemporaryDirectory() as tmp:
                        runs.append(measure(server.database(f"tick_{n}"), Path(tmp), n, args.ticks))
                out.append(series("postgresql", runs))
            finally:
                server.stop()
                shutil.rmtree(server.root, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
