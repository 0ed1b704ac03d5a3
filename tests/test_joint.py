"""Training on both sets: which located SPIDER discs are trusted, the mixed disc call, and a run end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dicomgen import data_subset

from ai.decide import LOW_ENDPLATE, UP_ENDPLATE, Decision, DiscRule
from ai.infer import Analyzer, Member, grade_probs
from ai.labels import LEVEL_INDEX, LEVELS
from ai.models import BULGING, DISC, HERNIATION, N_GRADES, N_GRADES_BOTH, PFIRRMANN, V5, Grader, LandmarkNet
from ai.training.joint import usable_discs

SPIDER_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "spider-t2"


def chain(step: float = 20.0) -> np.ndarray:
    return np.stack([np.full(11, 100.0), 40.0 + step * np.arange(11)], 1)


def test_usable_discs_trust_an_agreed_regular_chain_only():
    agree = np.ones(11)
    use = usable_discs(chain(), agree)
    assert [LEVELS[i] for i in np.flatnonzero(use)] == [lv for lv in LEVELS if "-" in lv]
    top_doubt = agree.copy()
    top_doubt[LEVEL_INDEX["T12-L1"]] = 0.4  # 2 of 5 nets: that disc alone is left out
    assert not usable_discs(chain(), top_doubt)[0] and usable_discs(chain(), top_doubt).sum() == 5
    low_doubt = agree.copy()
    low_doubt[LEVEL_INDEX["L4-L5"]] = 0.6  # the count starts at the bottom: the whole slice is left out
    assert not usable_discs(chain(), low_doubt).any()
    skipped = chain()
    skipped[6:, 1] += 25  # one step 2.25 times the others: a vertebra skipped
    assert not usable_discs(skipped, agree).any()


def probs(
    disc=(0.7, 0.2, 0.08, 0.02), herniation=0.1, bulging=0.3, pfirrmann=(0.1, 0.6, 0.2, 0.05, 0.05)
) -> np.ndarray:
    p = np.zeros(N_GRADES_BOTH)
    p[0:2] = (0.5, 0.5)
    p[DISC] = disc
    p[V5] = 0.1
    p[HERNIATION], p[BULGING] = herniation, bulging
    p[PFIRRMANN] = pfirrmann
    return p


def test_disc_rule_mixes_both_readings_and_puts_herniation_first():
    rule = DiscRule(
        herniation_mix=0.5, herniation_threshold=0.5, extrusion_share=0.5, bulge_mix=0.5, bulge_threshold=0.5
    )
    assert rule.call(probs())[0] == "v1"
    # SPIDER's herniation head alone sure, the Tianchi head not: (0.1 + 0.95) / 2 >= 0.5
    assert rule.call(probs(herniation=0.95))[0] == "v3"
    assert rule.call(probs(disc=(0.1, 0.1, 0.2, 0.6), herniation=0.6))[0] == "v4"
    label, conf = rule.call(probs(disc=(0.3, 0.6, 0.05, 0.05), bulging=0.7))
    assert label == "v2" and 0 < conf < 1
    # mix 0: the SPIDER heads are not read at all
    only_tianchi = DiscRule(herniation_mix=0.0, bulge_mix=0.0)
    assert only_tianchi.call(probs(herniation=0.99, bulging=0.99))[0] == "v1"


def test_decision_reads_pfirrmann_for_discs_of_a_grader_with_the_spider_heads():
    d = Decision(disc_rule=DiscRule())
    assert d.pfirrmann("L4-L5", probs()) == (2, 0.6)
    assert d.pfirrmann("L4", probs()) is None
    assert d.pfirrmann("L4-L5", probs()[:N_GRADES]) is None  # a Tianchi-only grader: no grade, as before
    assert d.labels("L4-L5", probs()[:N_GRADES])[0] == ["v1"]  # and its disc call falls back to the arg-max
    # the expected grade, rounded: 0.1*1 + 0.6*2 + 0.2*3 + 0.05*4 + 0.05*5 = 2.35 -> 2; mass on both ends -> 3
    assert d.pfirrmann("L4-L5", probs(pfirrmann=(0.45, 0.05, 0.0, 0.05, 0.45)))[0] == 3
    assert Decision.from_dict(d.to_dict()) == d
    assert "disc_rule" not in Decision().to_dict()  # older models' model.json stays as it was


def test_schmorls_node_reads_spiders_endplate_heads_by_the_tuned_share():
    p = probs()  # Tianchi's v5 head 0.1
    p[UP_ENDPLATE], p[LOW_ENDPLATE] = 0.9, 0.7
    own = Decision(disc_rule=DiscRule(), v5_threshold=0.45)
    mixed = Decision(disc_rule=DiscRule(), v5_threshold=0.45, v5_endplate_mix=0.5)
    assert own.schmorl(p) == pytest.approx(0.1) and "v5" not in own.labels("L4-L5", p)[0]
    assert mixed.schmorl(p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.8)
    assert mixed.labels("L4-L5", p)[0] == ["v1", "v5"]  # beside the disc grade, as Tianchi annotates it
    assert mixed.labels("L4", p)[0] in (["v1"], ["v2"])  # a vertebra never carries it
    assert mixed.schmorl(p[:N_GRADES]) == pytest.approx(0.1)  # a Tianchi-only grader: its own head alone
    assert Decision.from_dict(mixed.to_dict()) == mixed
    assert Decision.from_dict(own.to_dict()).v5_endplate_mix == 0.0  # an older model.json: no mix


def test_grade_probs_of_both_heads_are_distributions():
    p = grade_probs(torch.randn(11, N_GRADES_BOTH))
    assert p.shape == (11, N_GRADES_BOTH)
    assert torch.allclose(p[:, DISC].sum(1), torch.ones(11)) and torch.allclose(p[:, PFIRRMANN].sum(1), torch.ones(11))
    assert ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError):
        Grader(outputs=12)


def test_a_grader_with_spider_heads_saves_loads_and_reports_pfirrmann(tmp_path: Path):
    torch.manual_seed(0)
    meta = {"width": 8, "crop_size": 32, "grader_outputs": N_GRADES_BOTH}
    Member(
        LandmarkNet(8),
        Grader(outputs=N_GRADES_BOTH),
        dict(meta, decision=Decision(disc_rule=DiscRule()).to_dict()),
        torch.device("cpu"),
    ).save(tmp_path)
    loaded = Analyzer.load(tmp_path, "cpu")
    levels = loaded.analyze(np.random.default_rng(0).random((120, 100), dtype=np.float32), (1.0, 1.0))
    for lv in levels:
        d = lv.to_dict()
        if lv.kind == "disc":
            assert d["pfirrmann"] in (1, 2, 3, 4, 5) and 0 < d["pfirrmann_confidence"] <= 1
            assert set(d["findings"]) == {"modic", "up_endplate", "low_endplate", "narrowing", "spondylolisthesis"}
            assert all(0 <= p <= 1 for p in d["findings"].values())
        else:
            assert d["pfirrmann"] is None and d["pfirrmann_confidence"] is None and d["findings"] is None


def spider_subset(folder: Path, n: int) -> Path:
    rows = list(csv.DictReader((SPIDER_DATA / "labels.csv").read_text().splitlines()))
    patients = list(dict.fromkeys(r["patient"] for r in rows))[:n]
    folder.mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, rows[0].keys())
        w.writeheader()
        w.writerows(r for r in rows if r["patient"] in patients)
    for p in patients:
        (folder / "images" / p).mkdir(parents=True)
        for src in (SPIDER_DATA / "images" / p).glob("*.dcm"):
            (folder / "images" / p / src.name).write_bytes(src.read_bytes())
    return folder


@pytest.mark.data
def test_run_with_spider_trains_both_heads_and_reports_both_sets(shared_data: Path, tmp_path: Path):
    if not SPIDER_DATA.is_dir():
        pytest.skip(f"SPIDER data not found at {SPIDER_DATA}")
    from ai.training.train import Recipe, run

    data = data_subset(shared_data, tmp_path / "data", 10)
    spider = spider_subset(tmp_path / "spider", 6)
    recipe = Recipe(lm_epochs=1, gr_epochs=1, width=8, input_size=128, crop_size=32)
    report = run(data, tmp_path / "out", recipe, folds=2, log=lambda m: None, spider_dir=spider)
    assert {"spider_herniation_specificity", "spider_pfirrmann_accuracy", "tianchi_macro_f1"} <= set(report["cv_mean"])
    discs = len((spider / "labels.csv").read_text().splitlines()) - 1
    assert report["spider_pooled_nested"]["discs"] == discs
    # each fold counts both sets apart: Tianchi's studies, SPIDER's discs
    assert sum(m["studies"] for m in report["per_fold"]) == 10
    assert sum(m["spider_discs"] for m in report["per_fold"]) == discs
    assert len(json.loads((tmp_path / "out" / "oof_spider.json").read_text())) == 6
    # pooled held-out figures with patient-bootstrap intervals around them, both sets and each SPIDER manufacturer
    ci, nested = report["ci95"], report["cv_pooled_nested"]
    for key in ("within_6mm", "tianchi_macro_f1"):
        assert ci["tianchi"][key][0] <= nested[key] <= ci["tianchi"][key][1]
    spider_ci = ci["spider"]["spider_pfirrmann_accuracy"]
    assert spider_ci[0] <= report["spider_pooled_nested"]["spider_pfirrmann_accuracy"] <= spider_ci[1]
    assert {f"spider_{name}" for name in report["spider_per_manufacturer_nested"]} <= set(ci)
    from ai.training.model_card import tables

    assert "95 % CI" in tables(report) and "95 % bootstrap" in tables(report)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["grader_outputs"] == N_GRADES_BOTH and "disc_rule" in meta["decision"]
    model = Analyzer.load(tmp_path / "out", "cpu")
    from ai.spider import load_spider

    levels = model.analyze(*load_spider(spider)[0].load())
    assert all(lv.pfirrmann in (1, 2, 3, 4, 5) for lv in levels if lv.kind == "disc")
