"""LSMRI's layout and figures on hand-made predictions whose score is known, and `dicomnode evaluate` on the real
folder (skipped where ../shared is absent)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import DICOMNODE
from pydicom.uid import generate_uid

from ai.lsmri import METRIC_KEYS, LsmriDisc, LsmriStudy, auc, is_lsmri, load_lsmri, lsmri_metrics
from ai.spider import is_spider

LSMRI_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lsmri-t2"


def disc(level: str, x: float, y: float, bulge: bool = False, stenosis: bool = False, grade: int | None = 2):
    return LsmriDisc(level, x, y, 40.0, bulge, stenosis, grade)


def said(level: str, x: float, y: float, label: str = "v1", stenosis: float = 0.0, grade: int | None = 2) -> dict:
    return {
        "level": level,
        "kind": "disc",
        "x": x,
        "y": y,
        "labels": [label],
        "pfirrmann": grade,
        "stenosis": stenosis >= 0.5,
        "findings": {"stenosis": stenosis},
    }


def test_points_calls_stenosis_and_grades_are_scored_as_defined():
    st = LsmriStudy(
        "1",
        "1.2",
        "1.2.3",
        None,
        discs={
            d.level: d
            for d in (
                disc("L5-S1", 100, 300, bulge=True, stenosis=True, grade=4),
                disc("L4-L5", 100, 260, bulge=True, stenosis=False, grade=3),
                disc("L3-L4", 100, 220, grade=2),
                disc("L2-L3", 100, 180, grade=None),
            )
        },
    )
    preds = {
        "1.2.3": [
            said("L5-S1", 105, 300, "v3", stenosis=0.9, grade=4),  # 5 px off a 40 px step: within 0.175 (7 px)
            said("L4-L5", 100, 268, "v1", stenosis=0.6, grade=5),  # 8 px off: outside; bulge missed
            said("L3-L4", 100, 220, "v2", stenosis=0.2, grade=1),  # bulge called on a normal disc
            said("L2-L3", 100, 181, "v1", stenosis=0.1, grade=None),
        ]
    }
    m = lsmri_metrics([st], preds)
    assert set(METRIC_KEYS) <= m.keys() and m["lsmri_studies"] == 1 and m["lsmri_discs"] == 4
    assert m["lsmri_unanswered"] == 0 and m["lsmri_unnamed"] == 0
    assert m["lsmri_loc_within_0175_step"] == 0.75
    # bulge: protrusion counts as bulge (1 of 2 found); one of two normal discs called bulge
    assert m["lsmri_bulge_sensitivity"] == 0.5 and m["lsmri_bulge_specificity"] == 0.5
    assert m["lsmri_bulge_balanced_accuracy"] == 0.5
    # stenosis: the one stenotic disc ranks above all three others; the call at 0.5 is wrong once (0.6)
    assert m["lsmri_stenosis_auc"] == 1.0
    assert m["lsmri_stenosis_sensitivity"] == 1.0 and m["lsmri_stenosis_specificity"] == round(2 / 3, 4)
    # Pfirrmann on the three graded discs: 4 = 4, 5 vs 3 (two off), 1 vs 2
    assert m["lsmri_pfirrmann_graded"] == 3
    assert m["lsmri_pfirrmann_accuracy"] == round(1 / 3, 4) and m["lsmri_pfirrmann_within_one"] == round(2 / 3, 4)


def test_a_disc_the_node_does_not_name_is_missed_and_called_normal():
    st = LsmriStudy("1", "1.2", "1.2.3", None, discs={"L5-S1": disc("L5-S1", 1, 1, bulge=True, stenosis=True)})
    m = lsmri_metrics([st], {"1.2.3": [said("L4-L5", 1, 1, "v3", stenosis=0.9)]})
    assert m["lsmri_unnamed"] == 1 and m["lsmri_loc_within_0175_step"] == 0.0
    assert m["lsmri_bulge_sensitivity"] == 0.0 and m["lsmri_stenosis_sensitivity"] == 0.0
    assert m["lsmri_pfirrmann_accuracy"] == 0.0  # graded, not answered: wrong
    assert lsmri_metrics([st], {})["lsmri_unanswered"] == 1


def test_auc_counts_ties_half_and_needs_both_classes():
    assert auc([0.9, 0.1, 0.5, 0.5], [True, False, True, False]) == 0.875
    assert auc([0.2, 0.3], [True, True]) is None
    assert auc([0.0, 0.0], [True, False]) == 0.5  # a node that reports no stenosis ranks nothing


def test_the_layout_is_told_apart_from_spiders_and_read_by_evaluate(tmp_path: Path):
    """A two-disc LSMRI folder of synthetic slices: read as LSMRI, not SPIDER, and scored end to end."""
    folder = tmp_path / "lsmri"
    files = write_series(folder / "images" / "0001", SeriesSpec("T2_TSE_SAG_384", slices=1), generate_uid())
    files[0].rename(folder / "images" / "0001" / "0001_t2.dcm")
    import pydicom

    ds = pydicom.dcmread(folder / "images" / "0001" / "0001_t2.dcm")
    columns = ["patient", "series", "study_uid", "sop_instance_uid", "level", "x", "y", "step_px", "bulge"]
    columns += ["stenosis", "pfirrmann"]
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for level, y, grade in (("L5-S1", 200, 3), ("L4-L5", 160, "")):
            w.writerow(["0001", "0001_t2", ds.StudyInstanceUID, ds.SOPInstanceUID, level, 128, y, 40, 1, 0, grade])
    assert is_lsmri(folder) and not is_spider(folder)
    assert [st.discs["L5-S1"].pfirrmann for st in load_lsmri(folder)] == [3]
    r = subprocess.run(
        [*DICOMNODE, "evaluate", "--data", str(folder), "--json"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["layout"] == "lsmri" and report["lsmri_studies"] == 1 and report["lsmri_discs"] == 2
    assert set(METRIC_KEYS) <= report.keys()


@pytest.mark.data
@pytest.mark.skipif(not LSMRI_DATA.is_dir(), reason=f"LSMRI data not found at {LSMRI_DATA} (../shared is absent)")
def test_the_real_folder_loads_every_disc_with_its_image():
    studies = load_lsmri(LSMRI_DATA)
    assert len(studies) == 407 and sum(len(st.discs) for st in studies) == 2437
    assert all(st.path is not None and st.path.is_file() for st in studies)
    assert sum(d.pfirrmann is not None for st in studies for d in st.discs.values()) == 1221
    assert {st.manufacturer for st in studies} == {"SIEMENS"}


def test_bootstrap_intervals_contain_the_figure_and_shrink_with_more_patients():
    from ai.spider import bootstrap_ci

    def studies(n: int) -> tuple[list[LsmriStudy], dict]:
        out, preds = [], {}
        for i in range(n):
            uid = f"1.2.{i}"
            out.append(LsmriStudy(str(i), "1.2", uid, None, discs={"L5-S1": disc("L5-S1", 0, 0, bulge=i % 2 == 0)}))
            preds[uid] = [said("L5-S1", 0, 0, "v2" if i % 3 == 0 else "v1")]
        return out, preds

    small, big = studies(30), studies(300)
    ci_small = bootstrap_ci(*small, lsmri_metrics, ["lsmri_bulge_sensitivity"])["lsmri_bulge_sensitivity"]
    ci_big = bootstrap_ci(*big, lsmri_metrics, ["lsmri_bulge_sensitivity"])["lsmri_bulge_sensitivity"]
    figure = lsmri_metrics(*big)["lsmri_bulge_sensitivity"]
    assert ci_big[0] <= figure <= ci_big[1]
    assert ci_big[1] - ci_big[0] < ci_small[1] - ci_small[0]
