"""SPIDER's layout and figures on hand-made predictions whose score is known."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicomgen import SeriesSpec, write_series
from peers import DICOMNODE
from pydicom.uid import generate_uid

from ai.spider import METRIC_KEYS, SpiderDisc, SpiderStudy, load_spider, quadratic_kappa, spider_metrics

SPIDER_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "spider-t2"


def disc(level: str, herniation: int = 0, bulging: int = 0, pfirrmann: int = 2) -> SpiderDisc:
    return SpiderDisc(level, {"disc_herniation": herniation, "disc_bulging": bulging, "pfirrmann": pfirrmann})


def study(uid: str, *discs: SpiderDisc) -> SpiderStudy:
    return SpiderStudy("1", "1.2", uid, None, discs={d.level: d for d in discs})


def said(level: str, label: str, pfirrmann: int | None = None) -> dict:
    return {"level": level, "kind": "disc", "labels": [label], "pfirrmann": pfirrmann}


def test_calls_are_read_as_herniation_bulging_and_abnormal():
    st = study(
        "1.2.3",
        disc("L5-S1", herniation=1, pfirrmann=4),
        disc("L4-L5", bulging=1, pfirrmann=3),
        disc("L3-L4", pfirrmann=2),
        disc("L2-L3", pfirrmann=1),
    )
    preds = {"1.2.3": [said("L5-S1", "v4", 4), said("L4-L5", "v3", 3), said("L3-L4", "v2", 3), said("L2-L3", "v1", 1)]}
    m = spider_metrics([st], preds)
    assert set(METRIC_KEYS) <= m.keys() and m["studies"] == 1 and m["discs"] == 4 and m["unnamed"] == 0
    # herniation: the extrusion is found (1/1); of the three others the protrusion call on the bulge is wrong (2/3)
    assert m["spider_herniation_sensitivity"] == 1.0 and m["spider_herniation_specificity"] == round(2 / 3, 4)
    # bulging: the bulge was called a protrusion (0/1); the normal L3-L4 called bulge (1 of 3 negatives wrong)
    assert m["spider_bulging_sensitivity"] == 0.0 and m["spider_bulging_specificity"] == round(2 / 3, 4)
    # abnormal: both abnormal discs found; of the two normal ones L3-L4 was called abnormal
    assert m["spider_abnormal_sensitivity"] == 1.0 and m["spider_abnormal_specificity"] == 0.5
    assert m["spider_abnormal_balanced_accuracy"] == 0.75
    assert m["spider_pfirrmann_accuracy"] == 0.75 and m["spider_pfirrmann_within_one"] == 1.0


def test_a_disc_the_node_does_not_name_is_called_normal_and_counted_unnamed():
    st = study("1.2.3", disc("L5-S1", herniation=1), disc("L4-L5"))
    m = spider_metrics([st], {"1.2.3": [said("L4-L5", "v1", 2)]})
    assert m["unnamed"] == 1 and m["spider_herniation_sensitivity"] == 0.0
    assert m["spider_herniation_specificity"] == 1.0
    assert m["spider_pfirrmann_accuracy"] == 0.5  # the unnamed disc has no grade: counted wrong
    unanswered = spider_metrics([st], {})
    assert unanswered["unnamed"] == 2 and unanswered["spider_abnormal_sensitivity"] == 0.0


def test_vertebra_levels_are_not_read_as_disc_calls():
    st = study("1.2.3", disc("L5-S1"))
    m = spider_metrics([st], {"1.2.3": [{"level": "L5", "kind": "vertebra", "labels": ["v2"]}, said("L5-S1", "v1", 2)]})
    assert m["spider_abnormal_specificity"] == 1.0


def test_quadratic_kappa():
    assert quadratic_kappa([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == 1.0
    # a constant rater agrees no better than chance
    assert quadratic_kappa([1, 2, 3, 4, 5], [3, 3, 3, 3, 3]) == 0.0
    # off by one everywhere is far better than chance under quadratic weights, off by four far worse
    assert 0.5 < quadratic_kappa([1, 2, 3, 4, 5, 5], [2, 3, 4, 5, 4, 5]) < 1.0
    assert quadratic_kappa([1, 5], [5, 1]) < 0


def test_load_spider_reads_the_layout(tmp_path: Path):
    """labels.csv rows grouped by slice, the image found at images/<patient>/<series>.dcm or else by its UID."""
    study_uid = generate_uid()
    paths = write_series(tmp_path / "x", SeriesSpec("T2 SAG", slices=2), study_uid)
    import pydicom

    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    (tmp_path / "images" / "7").mkdir(parents=True)
    paths[0].rename(tmp_path / "images" / "7" / "7_t2.dcm")
    fields = [
        "patient",
        "series",
        "study_uid",
        "sop_instance_uid",
        "level",
        "disc_herniation",
        "disc_bulging",
        "pfirrmann",
        "modic",
        "spacing_flags",
    ]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for level, h in (("L5-S1", 1), ("L4-L5", 0)):
            w.writerow(
                {
                    "patient": "7",
                    "series": "7_t2",
                    "study_uid": study_uid,
                    "sop_instance_uid": uids[0],
                    "level": level,
                    "disc_herniation": h,
                    "disc_bulging": 0,
                    "pfirrmann": 3,
                    "modic": 2,
                    "spacing_flags": "non_square_matrix",
                }
            )
        w.writerow(
            {
                "patient": "8",
                "series": "8_t2",
                "study_uid": study_uid,
                "sop_instance_uid": uids[1],
                "level": "L5-S1",
                "disc_herniation": 0,
                "disc_bulging": 1,
                "pfirrmann": 2,
                "modic": 0,
                "spacing_flags": "",
            }
        )
    studies = load_spider(tmp_path)
    assert [st.instance_uid for st in studies] == uids
    assert studies[0].path == tmp_path / "images" / "7" / "7_t2.dcm" and studies[1].path == paths[1]
    assert studies[0].discs["L5-S1"].herniation and not studies[0].discs["L4-L5"].abnormal
    assert studies[0].discs["L5-S1"].grades["modic"] == 2 and studies[0].spacing_flags == ["non_square_matrix"]
    pixels, _ = studies[1].load()
    assert pixels.ndim == 2


@pytest.mark.data
def test_evaluate_reads_spider_and_reports_the_contract(tmp_path: Path):
    """`dicomnode evaluate` on a few real SPIDER slices (read at run time, nothing of them kept): every key of the
    contract, one figure per manufacturer, and a slice whose file is missing counted as unanswered."""
    if not SPIDER_DATA.is_dir():
        pytest.skip(f"SPIDER data not found at {SPIDER_DATA}")
    rows = list(csv.DictReader((SPIDER_DATA / "labels.csv").read_text().splitlines()))
    patients = list(dict.fromkeys(r["patient"] for r in rows))[:4]
    keep = [r for r in rows if r["patient"] in patients]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, rows[0].keys())
        w.writeheader()
        w.writerows(keep)
    for p in patients[:3]:  # the fourth slice is missing
        (tmp_path / "images" / p).mkdir(parents=True)
        src = next((SPIDER_DATA / "images" / p).glob("*.dcm"))
        (tmp_path / "images" / p / src.name).write_bytes(src.read_bytes())
    r = subprocess.run(
        [*DICOMNODE, "evaluate", "--data", str(tmp_path), "--json"], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(METRIC_KEYS) | {"studies", "discs", "unanswered", "unnamed"} <= out.keys()
    assert out["studies"] == 4 and out["discs"] == len(keep) and len(out["unanswered"]) == 1
    assert out["unnamed"] == sum(r["patient"] == patients[3] for r in keep)
    assert all(0.0 <= out[k] <= 1.0 for k in METRIC_KEYS if k != "spider_pfirrmann_kappa")
    assert sum(m["studies"] for m in out["per_manufacturer"].values()) == 4
    assert np.isfinite(out["spider_pfirrmann_kappa"])
