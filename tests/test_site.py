"""The site layout (`dicomnode reviews export`): its figures on hand-made predictions whose score is known, and
`dicomnode train --site` (operating points re-tuned on a site's reviews by nested CV by patient) on real LSMRI
slices whose "site readers" call bulges more often than the shipped model (skipped where ../shared is absent)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, write_series
from pydicom.uid import generate_uid
from test_lsmri import said as lsmri_said

from ai.decide import DiscRule
from ai.infer import WEIGHTS_ROOT
from ai.labels import LEVELS
from ai.lsmri import is_lsmri
from ai.models import N_GRADES_BOTH
from ai.site import METRIC_KEYS, SiteDisc, SiteStudy, is_site, load_site, node_call, site_metrics
from ai.spider import is_spider, quadratic_kappa
from ai.training.site import Table, check_out, choose_threshold, mixed_scores, refit_head, tune, write_model
from dicomnode import cli
from dicomnode.review import EXPORT_COLUMNS

LSMRI_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lsmri-t2"
COLUMNS = EXPORT_COLUMNS  # what `dicomnode reviews export` writes


def disc(level: str, call: str, x: float | None = 100, y: float | None = 100, **kw) -> SiteDisc:
    args = {"schmorl": False, "pfirrmann": 2, "stenosis": False} | kw
    return SiteDisc(level, x, y, 40.0, call, args["schmorl"], args["pfirrmann"], args["stenosis"])


def said(level: str, x: float, y: float, labels: list[str], stenosis: float = 0.0, grade: int | None = 2) -> dict:
    """The node's answer for a disc, as test_lsmri makes it, with several labels (Schmorl's node co-occurs)."""
    return lsmri_said(level, x, y, labels[0], stenosis, grade) | {"labels": labels}


def test_calls_points_schmorl_stenosis_and_grades_are_scored_as_defined():
    st = SiteStudy(
        "job1",
        "1.2",
        "1.2.3",
        None,
        discs={
            d.level: d
            for d in (
                disc("L5-S1", "protrusion", 100, 300, stenosis=True, pfirrmann=4),
                disc("L4-L5", "bulge", 100, 260, schmorl=True, pfirrmann=3),
                disc("L3-L4", "normal", 100, 220, pfirrmann=2),
                disc("L2-L3", "extrusion", 100, 180, pfirrmann=None),
                disc("L1-L2", "normal", None, None, stenosis=True, pfirrmann=2),  # no point; the node names no L1-L2
            )
        },
    )
    preds = {
        "1.2.3": [
            said("L5-S1", 105, 300, ["v3"], stenosis=0.9, grade=4),  # 5 px off a 40 px step: within 0.175 (7 px)
            said("L4-L5", 100, 268, ["v1", "v5"], stenosis=0.6, grade=5),  # 8 px off: outside; bulge missed
            said("L3-L4", 100, 220, ["v2"], stenosis=0.2, grade=1),  # bulge called on a normal disc
            said("L2-L3", 100, 181, ["v4", "v5"], stenosis=0.1, grade=None),  # Schmorl's node the reviewer did not see
        ]
    }
    m = site_metrics([st], preds)
    assert set(METRIC_KEYS) <= m.keys()
    assert (m["site_studies"], m["site_discs"], m["site_unanswered"], m["site_unnamed"]) == (1, 5, 0, 1)
    assert m["site_loc_within_0175_step"] == 0.75  # 3 of the 4 discs with a reviewer's point
    # calls: protrusion = v3, normal = normal (L1-L2 unnamed: called normal), extrusion = v4: 3 of 5
    assert m["site_call_agreement"] == 0.6
    # abnormal: L5-S1 and L2-L3 found, L4-L5 missed (2 of 3); of the two normal discs L3-L4 was called bulge
    assert m["site_abnormal_sensitivity"] == round(2 / 3, 4) and m["site_abnormal_specificity"] == 0.5
    assert m["site_abnormal_balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)
    assert m["site_bulge_sensitivity"] == 0.0 and m["site_bulge_specificity"] == 0.75
    assert m["site_herniation_sensitivity"] == 1.0 and m["site_herniation_specificity"] == 1.0
    assert m["site_schmorl_agreement"] == 0.8  # all but L2-L3
    # stenosis: L5-S1 found, L1-L2 (unnamed) missed; L4-L5 (0.6) called on a disc without; agreement 3 of 5;
    # AUC: 0.9 ranks above the three negatives (0.6, 0.2, 0.1), the unnamed disc's 0 above none: 3 of 6 pairs
    assert m["site_stenosis_sensitivity"] == 0.5 and m["site_stenosis_specificity"] == round(2 / 3, 4)
    assert m["site_stenosis_agreement"] == 0.6 and m["site_stenosis_auc"] == 0.5
    # Pfirrmann on the four graded discs: 4 = 4, 5 vs 3, 1 vs 2, and L1-L2 unanswered (wrong)
    assert m["site_pfirrmann_graded"] == 4
    assert m["site_pfirrmann_accuracy"] == 0.25 and m["site_pfirrmann_within_one"] == 0.5
    assert m["site_pfirrmann_kappa"] == quadratic_kappa([4, 3, 2], [4, 5, 1])


def test_a_study_the_node_did_not_answer_counts_with_every_disc_called_normal():
    st = SiteStudy("job2", "1.2", "1.2.9", None, discs={"L5-S1": disc("L5-S1", "bulge", stenosis=True)})
    m = site_metrics([st], {})
    assert m["site_unanswered"] == 1 and m["site_unnamed"] == 1 and m["site_discs"] == 1
    assert m["site_abnormal_sensitivity"] == 0.0 and m["site_call_agreement"] == 0.0
    assert m["site_stenosis_auc"] is None  # one class only
    assert node_call(None) == "normal" and node_call({"labels": ["v5", "v3"]}) == "protrusion"


def test_a_disc_whose_stenosis_was_not_rated_is_left_out_of_the_stenosis_figures():
    st = SiteStudy(
        "job3",
        "1.2",
        "1.2.7",
        None,
        discs={"L5-S1": disc("L5-S1", "normal", stenosis=True), "L4-L5": disc("L4-L5", "normal", stenosis=None)},
    )
    m = site_metrics([st], {"1.2.7": [said("L5-S1", 100, 100, ["v1"], 0.9), said("L4-L5", 100, 100, ["v1"], 0.9)]})
    assert m["site_discs"] == 2 and m["site_stenosis_positives"] == 1
    assert m["site_stenosis_sensitivity"] == 1.0 and m["site_stenosis_agreement"] == 1.0  # L4-L5's call not counted


def write_site(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in COLUMNS} for r in rows])


def synthetic_site(folder: Path) -> pydicom.Dataset:
    """One synthetic slice with two reviewed discs, L5-S1 reviewed twice (the later review counts)."""
    files = write_series(folder / "tmp", SeriesSpec("T2_TSE_SAG_384", slices=1), generate_uid())
    ds = pydicom.dcmread(files[0])
    (folder / "images" / "job1").mkdir(parents=True)
    files[0].rename(folder / "images" / "job1" / f"{ds.SeriesInstanceUID}.dcm")
    shutil.rmtree(folder / "tmp")
    base = {
        "patient": "job1",
        "study_uid": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "step_px": 40,
        "schmorl": 0,
        "stenosis": 0,
        "job_id": 1,
    }
    day = "2026-12-0{}T10:00:00Z".format
    write_site(
        folder,
        [
            base | {"level": "L5-S1", "x": 128, "y": 200, "call": "extrusion", "reviewer": "a", "reviewed_at": day(3)},
            base | {"level": "L4-L5", "x": 128, "y": 160, "call": "normal", "pfirrmann": 3, "stenosis": ""},
            base | {"level": "L5-S1", "x": 128, "y": 200, "call": "bulge", "reviewer": "a", "reviewed_at": day(1)},
        ],
    )
    return ds


def test_the_layout_is_told_apart_from_lsmris_and_read_by_evaluate(tmp_path: Path, monkeypatch, capsys):
    import ai.cli
    from ai.cli import evaluate_dir

    folder = tmp_path / "site"
    synthetic_site(folder)
    assert is_site(folder) and is_lsmri(folder) and not is_spider(folder)  # step_px too: the call column decides
    (st,) = load_site(folder)
    assert st.path is not None and st.path.is_file()
    assert st.discs["L5-S1"].call == "extrusion" and st.discs["L4-L5"].pfirrmann == 3  # the later review
    assert st.discs["L5-S1"].stenosis is False and st.discs["L4-L5"].stenosis is None  # empty: not rated
    report = evaluate_dir(folder, "default", "cpu")
    assert report["layout"] == "site" and report["site_studies"] == 1 and report["site_discs"] == 2
    assert set(METRIC_KEYS) <= report.keys() and "bootstrap_95ci" in report
    monkeypatch.setattr(ai.cli, "evaluate_dir", lambda *a, **k: report)  # evaluate's text output of this layout
    assert cli.main(["evaluate", "--data", str(folder)]) == 0
    assert "site_call_agreement" in capsys.readouterr().out


def test_an_unknown_call_is_an_error_not_a_normal_disc(tmp_path: Path):
    write_site(
        tmp_path, [{"patient": "j", "sop_instance_uid": "1.2", "series": "1.3", "level": "L4-L5", "call": "huge"}]
    )
    with pytest.raises(ValueError, match="huge"):
        load_site(tmp_path)


def test_the_threshold_maximises_balanced_accuracy_at_the_specificity_floor():
    neg, pos = [0.1, 0.2, 0.3, 0.4, 0.5], [0.35, 0.45, 0.6, 0.7, 0.8]
    scores, truth = np.array(neg + pos), np.array([False] * 5 + [True] * 5)
    # by hand: 0.325 gives sens 5/5, spec 3/5 (balanced 0.8); 0.425 gives 4/5, 4/5 (0.8); 0.55 gives 3/5, 5/5
    # (0.8); the base, 0.48, gives 3/5, 4/5 (0.7)
    assert choose_threshold(scores, truth, base=0.48, floor=0.8) == 0.425  # of the best, the nearest the base
    assert choose_threshold(scores, truth, base=0.48, floor=0.9) == 0.55  # the only one that specific
    assert choose_threshold(scores, truth, base=0.3, floor=0.5) == 0.325
    assert choose_threshold(scores[:8], truth[:8], base=0.48, floor=0.8) == 0.48  # three positives: kept


def test_tune_moves_a_threshold_only_where_inner_folds_by_patient_gain():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 80)
    patients = np.repeat(np.arange(20), 4)
    low, why = tune(scores, scores >= 0.2, patients, base=0.45, floor=0.7)
    assert 0.15 < low < 0.25 and why.startswith("re-tuned")
    same, why = tune(scores, scores >= 0.45, patients, base=0.45, floor=0.7)
    assert same == 0.45 and why.startswith("kept")
    few, why = tune(scores[:4], scores[:4] >= 0.2, patients[:4], base=0.45, floor=0.7)
    assert few == 0.45 and "fewer than" in why


def test_the_stenosis_head_refitted_for_fine_tuned_graders_follows_where_their_answers_moved():
    """Fine-tuned graders carry the stenosis signal in another head than the base head was fitted on: the refit
    (rated discs only, shrunk toward the base) finds it; with too few stenotic discs it gives up."""
    from ai.lsmri import auc
    from ai.stenosis import DISC_LEVELS, StenosisHead

    rng = np.random.default_rng(0)
    n = 240
    y = rng.random(n) < 0.25
    rated = rng.random(n) < 0.8
    moved = np.clip(np.where(y, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0.01, 0.99)  # where the signal is now
    probs = np.stack([rng.uniform(0.05, 0.95, n), moved, rng.uniform(0.05, 0.95, n)], 1)
    levels = [DISC_LEVELS[i % 6] for i in range(n)]
    table = Table(probs, levels, np.repeat(np.arange(n // 4), 4), y, y, np.where(rated, y, ~y), rated)
    head = StenosisHead([3.0, 0.0, 0.0] + [0.0] * 6, 0.0, 0.5)  # reads the first head, where the signal was
    refit = refit_head(table, np.ones(n, bool), head)
    assert refit is not None and refit.threshold == head.threshold
    score = [refit.probability(p, lv) for p, lv in zip(probs[rated], np.array(levels)[rated], strict=True)]
    before = [head.probability(p, lv) for p, lv in zip(probs[rated], np.array(levels)[rated], strict=True)]
    assert auc(score, list(y[rated])) > 0.85 > 0.65 > auc(before, list(y[rated]))
    few = np.isin(np.arange(n), np.flatnonzero(y & rated)[:4]) | ~y  # four rated stenotic discs
    assert refit_head(table, few, head) is None


def test_the_mixed_scores_call_as_the_disc_rule_does():
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.01, 1, (300, N_GRADES_BOTH))
    rule = DiscRule(herniation_mix=0.5, herniation_threshold=0.45, bulge_mix=0.25, bulge_threshold=0.3)
    ph, pb = mixed_scores(rule, probs)
    for p, h, b in zip(probs, ph, pb, strict=True):
        expected = "v2" if b >= rule.bulge_threshold else "v1"
        main, _ = rule.call(p)
        assert (main in ("v3", "v4")) == (h >= rule.herniation_threshold)
        if h < rule.herniation_threshold:
            assert main == expected


def fake_model(folder: Path) -> Path:
    (folder / "m1").mkdir(parents=True)
    (folder / "m1" / "landmarks.safetensors").write_bytes(b"weights")
    (folder / "m1" / "model.json").write_text("{}")
    (folder / "model.json").write_text('{"version": "1"}')
    (folder / "MODEL_CARD.md").write_text("# Model card: fake\n")
    return folder


def test_the_new_folder_copies_the_weights_and_never_lands_in_ai_weights_or_the_base(tmp_path: Path):
    base = fake_model(tmp_path / "base")
    out = tmp_path / "site-model"
    write_model(base, out, {"version": "1-site-20261204", "decision": {}}, "\n## Site re-tune (x)\ntext\n")
    weights = (base / "m1" / "landmarks.safetensors", out / "m1" / "landmarks.safetensors")
    assert weights[0].read_bytes() == weights[1].read_bytes() and not os.path.samefile(*weights)  # a copy: a base
    # retrained in place must not change the site's model under it
    assert not os.path.samefile(base / "m1" / "model.json", out / "m1" / "model.json")
    assert json.loads((out / "model.json").read_text())["version"] == "1-site-20261204"
    assert (base / "model.json").read_text() == '{"version": "1"}'
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: fake") and "## Site re-tune" in card
    for bad in (WEIGHTS_ROOT / "site-x", base, base / "inside", out):
        with pytest.raises(ValueError):
            check_out(bad, base)
    check_out(tmp_path / "new", base)


def test_train_site_refuses_other_training_flags_and_train_still_needs_data(tmp_path: Path, capsys):
    assert cli.main(["train", "--site", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "--site re-tunes operating points only" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "--data and --out are required" in capsys.readouterr().err
    assert cli.main(["train", "--site", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2


def lsmri_site(folder: Path, n: int) -> list[dict]:
    """The first n LSMRI patients as a site folder (their slices, the annotators' points, stenosis and grades):
    the reviewers' calls are filled in later."""
    with open(LSMRI_DATA / "labels.csv", newline="") as f:
        source = list(csv.DictReader(f))
    patients = list(dict.fromkeys(r["patient"] for r in source))[:n]
    rows = []
    for i, p in enumerate(patients):
        ds = pydicom.dcmread(LSMRI_DATA / "images" / p / f"{p}_t2.dcm", stop_before_pixels=True)
        (folder / "images" / f"job{i}").mkdir(parents=True)
        shutil.copyfile(
            LSMRI_DATA / "images" / p / f"{p}_t2.dcm", folder / "images" / f"job{i}" / f"{ds.SeriesInstanceUID}.dcm"
        )
        for r in source:
            if r["patient"] == p:
                rows.append({
                    "patient": f"job{i}", "study_uid": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
                    "sop_instance_uid": ds.SOPInstanceUID, "level": r["level"], "x": r["x"], "y": r["y"],
                    "step_px": r["step_px"], "call": "normal", "schmorl": 0, "pfirrmann": r["pfirrmann"],
                    "stenosis": r["stenosis"], "reviewer": f"dr{i % 2}",
                    "reviewed_at": f"2026-12-0{1 + i % 3}T10:00:00Z", "job_id": i,
                })  # fmt: skip
    write_site(folder, rows)
    return rows


@pytest.mark.data
@pytest.mark.skipif(not LSMRI_DATA.is_dir(), reason=f"LSMRI data not found at {LSMRI_DATA} (../shared is absent)")
def test_train_site_moves_the_bulge_threshold_down_for_readers_who_call_more_bulges(tmp_path: Path, capsys):
    """Six LSMRI patients (about 36 discs) whose "site readers" call a herniation where the shipped model does, a
    bulge wherever its bulge score reaches the median of the discs it calls normal, else normal."""
    from ai.cli import answer_all
    from ai.infer import Analyzer
    from ai.training.site import grade_site

    t0 = time.perf_counter()
    site = tmp_path / "site"
    rows = lsmri_site(site, 6)
    analyzer = Analyzer.load("default", "cpu")
    studies = load_site(site)
    graded, unreadable = grade_site(analyzer, studies, print)
    assert unreadable == 0
    rule = analyzer.decision.disc_rule
    assert rule is not None
    score = {}
    for g in graded:
        ph, pb = mixed_scores(rule, g.probs)
        score |= {(g.study.instance_uid, lv): (ph[i], pb[i]) for i, lv in enumerate(LEVELS)}
    normal_pb = [b for h, b in score.values() if h < rule.herniation_threshold and b < rule.bulge_threshold]
    low = float(np.median(normal_pb))
    for r in rows:
        h, b = score[(r["sop_instance_uid"], r["level"])]
        r["call"] = "protrusion" if h >= rule.herniation_threshold else "bulge" if b >= low else "normal"
    write_site(site, rows)
    studies = load_site(site)
    answers, _ = answer_all(analyzer, studies)  # the node itself, for the "before" figures
    node = site_metrics(studies, {st.instance_uid: lv for st, (lv, _) in zip(studies, answers, strict=True)})
    del analyzer, graded

    out = tmp_path / "retuned"
    base_json = (WEIGHTS_ROOT / "default" / "model.json").read_text()
    config = tmp_path / "node.toml"  # the node's config: its audit records the re-tune
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    assert cli.main(["train", "--site", str(site), "--out", str(out), "--device", "cpu", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    from storage import audit, db

    with db.open_db(tmp_path / "var" / "dicomnode.db").connect() as conn:
        (entry,) = audit.recent(conn, action="retune")
    assert entry["detail"] == {"studies": 6, "discs": report["discs"], "reviewers": 2, "version": report["version"]}
    print(json.dumps({k: report[k] for k in ("thresholds", "before", "after", "folds", "discs")}, indent=1))
    assert report["discs"] == len(rows) and report["folds"] == 5 and report["patients"] == 6
    assert report["before"] == {k: node[k] for k in report["before"]}  # the replay answers as the node does
    th = report["thresholds"]
    assert th["bulge"]["after"] < th["bulge"]["before"] == rule.bulge_threshold, th
    before, after = report["before"], report["after"]
    assert after["site_call_agreement"] > before["site_call_agreement"]
    assert after["site_abnormal_balanced_accuracy"] > before["site_abnormal_balanced_accuracy"]
    assert after["site_bulge_sensitivity"] > before["site_bulge_sensitivity"]
    assert (WEIGHTS_ROOT / "default" / "model.json").read_text() == base_json  # the base untouched

    meta = json.loads((out / "model.json").read_text())
    assert meta["version"].startswith(f"{json.loads(base_json)['version']}-site-")
    assert meta["based_on"]["model"] == "default" and meta["site"]["reviewers"] == 2
    assert meta["decision"]["disc_rule"]["bulge_threshold"] == th["bulge"]["after"]
    assert (WEIGHTS_ROOT / "default" / "m6" / "grader.safetensors").read_bytes() == (
        out / "m6" / "grader.safetensors"
    ).read_bytes()
    assert "## Site re-tune" in (out / "MODEL_CARD.md").read_text()
    retuned = Analyzer.load(str(out), "cpu")  # as `[ai] model = "<folder>"` names it
    assert retuned.version == meta["version"] and retuned.decision.disc_rule is not None
    assert retuned.decision.disc_rule.bulge_threshold == th["bulge"]["after"]
    ((levels, _),) = answer_all(retuned, studies[:1])[0]
    assert [lv["level"] for lv in levels] == list(LEVELS) and all(lv["labels"] for lv in levels)
    print(f"runtime {time.perf_counter() - t0:.1f} s")


def test_fine_tune_goes_with_site_only(capsys):
    assert cli.main(["train", "--data", "x", "--out", "y", "--fine-tune"]) == 2
    assert "--fine-tune goes with --site" in capsys.readouterr().err


@pytest.mark.data
@pytest.mark.skipif(not LSMRI_DATA.is_dir(), reason=f"LSMRI data not found at {LSMRI_DATA} (../shared is absent)")
def test_train_site_fine_tune_writes_graders_of_its_own_and_scores_them_held_out(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    """Four LSMRI patients as a site whose readers call a bulge where LSMRI's annotators saw stenosis and grade
    Pfirrmann as LSMRI's readers did: the graders are fine-tuned by the fixed recipe, scored per outer fold without
    its patients, and the new folder's int8 graders grade differently from the base's."""
    from ai.infer import Analyzer
    from ai.training.site_graders import RECIPE

    monkeypatch.setitem(RECIPE, "epochs", 2)  # the flow, not the recipe's figures: 15 fine-tunes in all
    site = tmp_path / "site"
    rows = lsmri_site(site, 4)
    for r in rows:
        r["call"] = "bulge" if r["stenosis"] == "1" else "normal"
    write_site(site, rows)
    out = tmp_path / "tuned"
    base_bytes = (WEIGHTS_ROOT / "default" / "m6" / "grader.safetensors").read_bytes()
    assert cli.main(["train", "--site", str(site), "--out", str(out), "--device", "cpu", "--fine-tune"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fine_tune"]["recipe"] == RECIPE and report["folds"] == 4
    assert "; weights " in report["thresholds"]["stenosis"]["how"]  # refitted, or why the base's stayed
    assert "site_stenosis_auc" in report["after"]  # fine-tuned graders move the ranking, not only the calls
    assert report["fine_tune"]["slices"] == 4 and 0 < report["fine_tune"]["discs_learnt"] <= len(rows)
    assert {"site_pfirrmann_accuracy", "site_call_agreement"} <= set(report["before"]) == set(report["after"])
    assert (WEIGHTS_ROOT / "default" / "m6" / "grader.safetensors").read_bytes() == base_bytes  # the base untouched
    for name in ("m6", "m7", "m8"):
        member = json.loads((out / name / "model.json").read_text())
        assert member["site_fine_tuned"] == report["fine_tune"] and "int8_activation_ranges" in member
        assert (out / name / "grader.safetensors").read_bytes() != (
            WEIGHTS_ROOT / "default" / name / "grader.safetensors"
        ).read_bytes()
    assert "fine-tuned on the reviews first" in (out / "MODEL_CARD.md").read_text()
    tuned, shipped = Analyzer.load(str(out), "cpu"), Analyzer.load("default", "cpu")
    assert tuned.int8_graders  # the new ranges rebuild int8 graders
    from ai.data import read_slice

    _, pixels, _ = read_slice(load_site(site)[0].path, load_site(site)[0].instance_uid)
    found = shipped.locate_slices([pixels])[0]
    assert np.abs(tuned.grade(found.img01, found.xy) - shipped.grade(found.img01, found.xy)).max() > 1e-3
