"""Cost of one completion-rule tick (and the gauges it updates) as the history grows: N finished studies (5 indexed
instances and a done job each) plus 20 studies arriving now, on SQLite. The cost must follow the active studies,
not the history: the figure at 100k within 2x of the figure at 1k. Prints JSON.

    .venv/bin/python benchmarks/tick.py [--sizes 1000 10000 100000] [--ticks 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode.complete import CompletionRule  # noqa: E402
from dicomnode.config import Config  # noqa: E402
from storage import db  # noqa: E402
from storage.filestore import FileStore  # noqa: E402

ACTIVE = 20
INSTANCES = 5


def fill(engine: object, finished: int, now: float) -> None:
    """The history as the node leaves it: finished studies, their instances and one done job each."""
    conn = db.connect_raw(engine)  # type: ignore[arg-type]
    with conn:
        conn.executemany(
            "INSERT INTO studies (study_uid, first_received, last_received, instances, calling_ae) VALUES (?,?,?,?,?)",
            ((f"1.2.{i}", now - 9e5, now - 9e5, INSTANCES, "PACS") for i in range(finished)),
        )
        conn.executemany(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, transfer_syntax, path,"
            " size, received_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                (
                    f"1.2.{i}.{k}",
                    "1.2.840.10008.5.1.4.1.1.4",
                    f"1.2.{i}",
                    f"1.2.{i}.9",
                    "1.2.840.10008.1.2.1",
                    "x",
                    1,
                    0,
                )
                for i in range(finished)
                for k in range(INSTANCES)
            ),
        )
        conn.executemany(
            "INSERT INTO jobs (study_uid, revision, state, created, updated, attempts, input_instances, finished)"
            " VALUES (?, 1, 'done', ?, ?, 1, ?, ?)",
            ((f"1.2.{i}", now - 9e5, now - 9e5, INSTANCES, now - 9e5) for i in range(finished)),
        )
        conn.executemany(
            "INSERT INTO studies (study_uid, first_received, last_received, instances, calling_ae) VALUES (?,?,?,?,?)",
            ((f"9.9.{i}", now, now, 3, "PACS") for i in range(ACTIVE)),
        )
    conn.close()


def measure(finished: int, ticks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.node.data_dir = tmp
        engine = db.open_db(Path(tmp) / "dicomnode.db")
        now = time.time()
        fill(engine, finished, now)
        rule = CompletionRule(cfg, engine, FileStore(Path(tmp), fsync=False))
        t0 = time.perf_counter()
        rule.tick(now)  # the first tick after an upgrade settles the history once
        first = time.perf_counter() - t0
        times = []
        for k in range(ticks):
            t0 = time.perf_counter()
            rule.tick(now + 1 + k)
            times.append(time.perf_counter() - t0)
        engine.dispose()
    return {
        "finished_studies": finished,
        "tick_s_median": round(statistics.median(times), 5),
        "tick_s_max": round(max(times), 5),
        "first_tick_s": round(first, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--ticks", type=int, default=7)
    args = p.parse_args()
    rows = [measure(n, args.ticks) for n in args.sizes]
    base = rows[0]["tick_s_median"]
    print(
        json.dumps(
            {
                "database": "sqlite",
                "active_studies": ACTIVE,
                "runs": rows,
                "ratio_largest_to_smallest": round(rows[-1]["tick_s_median"] / base, 2) if base else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
