"""The radiologist in the loop: a reviewer's verdict per disc (call, Schmorl's node, Pfirrmann, canal stenosis, the
point) and per chain (numbered one level off), the agreement it gives with the node over the last 30 and 90 days,
and the reviewed studies exported in a layout `dicomnode evaluate` scores and `dicomnode train --site` learns from.

Each review keeps what the node said when it was reviewed beside what the reviewer says, so the agreement stays
what the reviewer saw, whatever is reprocessed later. A chain "one level too high" means the disc the node named
L4-L5 is L5-S1: the export moves the names, the agreement compares each marked disc with itself."""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, desc, insert, select, update

from ai.labels import CALLS, DISC_LEVELS, SCHMORL, call_of, level_kind
from storage import db

SHIFTS = {0: "numbered right", 1: "one level too high", -1: "one level too low"}
WINDOWS = (30, 90)  # days
FINDINGS = ("call", "schmorl", "pfirrmann", "stenosis", "numbering")
EXPORT_COLUMNS = (
    "patient",
    "study_uid",
    "series",
    "sop_instance_uid",
    "level",
    "x",
    "y",
    "step_px",
    "call",
    "schmorl",
    "pfirrmann",
    "stenosis",
    "reviewer",
    "reviewed_at",
    "job_id",
)


class ReviewError(ValueError):
    """A review that cannot be saved as sent (no such job or level, a value out of range): said in one line."""


@dataclass
class DiscVerdict:
    level: str
    call: str
    schmorl: bool
    pfirrmann: int | None
    stenosis: bool | None
    x: float
    y: float


def node_verdicts(result: str | None) -> dict[str, DiscVerdict]:
    """What the node said of each disc of a job (its `result` JSON), in the reviewer's terms."""
    out = {}
    for lv in json.loads(result) if result else []:
        if level_kind(lv["level"]) != "disc":
            continue
        out[lv["level"]] = DiscVerdict(
            lv["level"],
            call_of(lv["labels"]),
            SCHMORL in lv["labels"],
            lv.get("pfirrmann"),
            lv.get("stenosis"),
            float(lv["x"]),
            float(lv["y"]),
        )
    return out


def parse_form(form: dict[str, str], node: dict[str, DiscVerdict]) -> tuple[list[DiscVerdict], int]:
    """The review form's fields (`call:<level>`, `schmorl:<level>`, `pfirrmann:<level>`, `stenosis:<level>`,
    `x:<level>`, `y:<level>`, `chain_shift`) as verdicts; a disc whose fields are absent keeps the node's answer."""
    try:
        shift = int(form.get("chain_shift", "0"))
    except ValueError:
        raise ReviewError("chain_shift: not a number") from None
    if shift not in SHIFTS:
        raise ReviewError("chain_shift: one of -1, 0, 1")
    verdicts = []
    for level, said in node.items():
        call = form.get(f"call:{level}", said.call)
        if call not in CALLS:
            raise ReviewError(f"{level}: call must be one of {', '.join(CALLS)}")
        grade = form.get(f"pfirrmann:{level}", "" if said.pfirrmann is None else str(said.pfirrmann))
        if grade not in ("", "1", "2", "3", "4", "5"):
            raise ReviewError(f"{level}: Pfirrmann 1-5 or none")
        try:
            x = float(form.get(f"x:{level}", said.x))
            y = float(form.get(f"y:{level}", said.y))
        except ValueError:
            raise ReviewError(f"{level}: the point is not a number") from None
        if not (np.isfinite(x) and np.isfinite(y)) or x < 0 or y < 0:
            raise ReviewError(f"{level}: the point lies outside the slice")
        has_checkboxes = f"call:{level}" in form  # unchecked boxes are not sent: read them only with the form
        verdicts.append(
            DiscVerdict(
                level,
                call,
                form.get(f"schmorl:{level}") == "1" if has_checkboxes else said.schmorl,
                int(grade) if grade else None,
                form.get(f"stenosis:{level}") == "1" if has_checkboxes else said.stenosis,
                round(x, 2),
                round(y, 2),
            )
        )
    return verdicts, shift


def save_review(conn: Any, job_id: int, reviewer: str, verdicts: list[DiscVerdict], chain_shift: int) -> int:
    """One review per job and reviewer: a second save replaces the first's verdicts (created kept, updated now);
    an event of the job says who reviewed (the verdicts stay in the review tables). Returns the discs corrected."""
    job = conn.execute(select(db.jobs.c.result).where(db.jobs.c.id == job_id)).first()
    if job is None or not job.result:
        raise ReviewError(f"job {job_id} has no results to review")
    node = node_verdicts(job.result)
    unknown = [v.level for v in verdicts if v.level not in node]
    if unknown:
        raise ReviewError(f"the node marked no disc {unknown[0]}")
    now = time.time()
    key = (db.reviews.c.job_id == job_id, db.reviews.c.reviewer == reviewer)
    review_id = conn.execute(select(db.reviews.c.id).where(*key)).scalar()
    if review_id is None:
        review_id = conn.execute(
            insert(db.reviews).values(
                job_id=job_id, reviewer=reviewer, created=now, updated=now, chain_shift=chain_shift
            )
        ).inserted_primary_key[0]
    else:
        conn.execute(
            update(db.reviews).where(db.reviews.c.id == review_id).values(updated=now, chain_shift=chain_shift)
        )
        conn.execute(delete(db.review_levels).where(db.review_levels.c.review_id == review_id))
    rows = []
    for v in verdicts:
        said = node[v.level]
        rows.append(
            {
                "review_id": review_id,
                "level": v.level,
                **{f"node_{k}": _stored(val) for k, val in asdict(said).items() if k != "level"},
                **{k: _stored(val) for k, val in asdict(v).items() if k != "level"},
            }
        )
    if rows:
        conn.execute(insert(db.review_levels), rows)
    changed = sum(corrected(r) for r in rows)
    db.add_job_event(conn, job_id, "reviewed", f"reviewed by {reviewer}: {changed} of {len(verdicts)} discs corrected")
    return changed


def _stored(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def corrected(row: Any) -> bool:
    """A review_levels row (or its dict) where the reviewer changed a finding or moved the point by a pixel or more."""
    m: Any = row if isinstance(row, dict) else row._mapping
    changed = any(m[k] != m[f"node_{k}"] for k in ("call", "schmorl", "pfirrmann", "stenosis"))
    return changed or bool(np.hypot(m["x"] - m["node_x"], m["y"] - m["node_y"]) >= 1.0)


def reviews_of(conn: Any, job_id: int) -> list[dict[str, Any]]:
    """A job's reviews, newest first: who, when, the chain shift and the verdicts by level."""
    out = []
    for r in conn.execute(select(db.reviews).where(db.reviews.c.job_id == job_id).order_by(desc(db.reviews.c.updated))):
        levels = conn.execute(select(db.review_levels).where(db.review_levels.c.review_id == r.id)).all()
        by_level = {lv.level: dict(lv._mapping) for lv in levels}
        out.append({**dict(r._mapping), "levels": by_level, "corrected": sum(map(corrected, by_level.values()))})
    return out


def agreement(conn: Any, now: float | None = None, floor: float = 0.0) -> dict[str, Any]:
    """Per window (`30d`, `90d`): reviews, discs, and per finding the share of discs where the node and the reviewer
    agree, with its count (Pfirrmann: exact and within one, over discs both graded; numbering: over reviews).
    `below_floor` names the 30-day findings under `floor` (none without a floor or without reviews)."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {"floor": floor or None}
    for days in WINDOWS:
        since = now - days * 86400
        revs = conn.execute(
            select(db.reviews.c.id, db.reviews.c.chain_shift).where(db.reviews.c.updated >= since)
        ).all()
        rows = conn.execute(select(db.review_levels).join(db.reviews).where(db.reviews.c.updated >= since)).all()
        graded = [r for r in rows if r.pfirrmann is not None and r.node_pfirrmann is not None]
        stenosis = [r for r in rows if r.stenosis is not None and r.node_stenosis is not None]
        out[f"{days}d"] = {
            "reviews": len(revs),
            "discs": len(rows),
            "call": _share([r.call == r.node_call for r in rows]),
            "schmorl": _share([r.schmorl == r.node_schmorl for r in rows]),
            "pfirrmann": {
                **_share([r.pfirrmann == r.node_pfirrmann for r in graded]),
                "within_one": _share([abs(r.pfirrmann - r.node_pfirrmann) <= 1 for r in graded])["agreement"],
            },
            "stenosis": _share([r.stenosis == r.node_stenosis for r in stenosis]),
            "numbering": _share([r.chain_shift == 0 for r in revs]),
        }
    recent = out["30d"]
    out["below_floor"] = [
        name
        for name in FINDINGS
        if floor and recent[name]["n"] and recent[name]["agreement"] is not None and recent[name]["agreement"] < floor
    ]
    return out


def set_gauges(figures: dict[str, Any]) -> None:
    """The agreement as Prometheus gauges (set at each scrape of /metrics; a finding without reviews is left out)."""
    from dicomnode import metrics

    for days in WINDOWS:
        window = figures[f"{days}d"]
        metrics.REVIEWED_DISCS.labels(window=f"{days}d").set(window["discs"])
        for name in FINDINGS:
            if window[name]["agreement"] is not None:
                metrics.AGREEMENT.labels(finding=name, window=f"{days}d").set(window[name]["agreement"])
        if window["pfirrmann"]["within_one"] is not None:
            metrics.AGREEMENT.labels(finding="pfirrmann_within_one", window=f"{days}d").set(
                window["pfirrmann"]["within_one"]
            )


def _share(hits: list[bool]) -> dict[str, Any]:
    return {"n": len(hits), "agreement": round(sum(hits) / len(hits), 4) if hits else None}


def export(conn: Any, root: Path, out: Path) -> dict[str, int]:
    """The reviewed studies as `evaluate --data` reads them: `labels.csv` (one row per reviewed disc, the newest
    review of each slice) and `images/job<id>/<series>.dcm`, the analysed slice as received. The folder holds
    patient images: it is meant to stay inside the hospital, like the node's own store."""
    latest: dict[str, Any] = {}  # SOP Instance UID -> (review, job): the newest review of each slice
    query = (
        select(db.reviews, db.jobs.c.sop_instance_uid, db.jobs.c.series_uid, db.jobs.c.study_uid, db.jobs.c.result)
        .join(db.jobs, db.jobs.c.id == db.reviews.c.job_id)
        .order_by(db.reviews.c.updated)
    )
    for r in conn.execute(query):
        if r.sop_instance_uid:
            latest[r.sop_instance_uid] = r
    out.mkdir(parents=True, exist_ok=True)
    rows, studies = [], 0
    for sop_uid, r in latest.items():
        rel = conn.execute(select(db.instances.c.path).where(db.instances.c.sop_instance_uid == sop_uid)).scalar()
        if rel is None or not (root / rel).is_file():
            continue  # removed by retention: nothing to score
        patient = f"job{r.job_id}"
        image = out / "images" / patient / f"{r.series_uid}.dcm"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, image)
        studies += 1
        node = node_verdicts(r.result)
        step = _disc_steps(node)
        levels = conn.execute(select(db.review_levels).where(db.review_levels.c.review_id == r.id)).all()
        for lv in levels:
            level = shifted(lv.level, r.chain_shift)
            if level is None:
                continue  # past the end of the chain once renamed
            rows.append(
                {
                    "patient": patient,
                    "study_uid": r.study_uid,
                    "series": r.series_uid,
                    "sop_instance_uid": sop_uid,
                    "level": level,
                    "x": lv.x,
                    "y": lv.y,
                    "step_px": round(step[lv.level], 2),
                    "call": lv.call,
                    "schmorl": lv.schmorl,
                    "pfirrmann": "" if lv.pfirrmann is None else lv.pfirrmann,
                    "stenosis": "" if lv.stenosis is None else lv.stenosis,
                    "reviewer": r.reviewer,
                    "reviewed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r.updated)),
                    "job_id": r.job_id,
                }
            )
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return {"studies": studies, "discs": len(rows)}


def shifted(level: str, shift: int) -> str | None:
    """The disc's name once the chain is renumbered: +1 (named one level too high) moves L4-L5 to L5-S1."""
    i = DISC_LEVELS.index(level) + shift
    return DISC_LEVELS[i] if 0 <= i < len(DISC_LEVELS) else None


def _disc_steps(node: dict[str, DiscVerdict]) -> dict[str, float]:
    """Each disc's local step: the mean distance to its neighbouring discs along the node's chain (pixels)."""
    names = [lv for lv in DISC_LEVELS if lv in node]
    pts = np.array([[node[n].x, node[n].y] for n in names], float)
    gaps = np.linalg.norm(np.diff(pts, axis=0), axis=1) if len(pts) > 1 else np.array([0.0])
    out = {}
    for i, name in enumerate(names):
        near = [gaps[j] for j in (i - 1, i) if 0 <= j < len(gaps)]
        out[name] = float(np.mean(near)) if near else 0.0
    return out
