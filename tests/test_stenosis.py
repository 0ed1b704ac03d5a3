"""The canal stenosis head: its fit on made-up discs whose answer is known, its operating point, what a model with
it says through `analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ai.lsmri import auc
from ai.models import N_GRADES_BOTH
from ai.stenosis import DISC_LEVELS, StenosisHead, features
from ai.training.stenosis import cross_validate, final_head, fit_logistic, threshold_for


def made_up_discs(n_patients: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    """Six discs a patient; stenosis follows the bulging head's probability (column 8) and the lowest two levels."""
    rng = np.random.default_rng(seed)
    probs, levels, patients, truth = [], [], [], []
    for p in range(n_patients):
        for level in DISC_LEVELS:
            row = rng.dirichlet(np.ones(N_GRADES_BOTH))
            row[8] = rng.uniform(0.01, 0.99)
            logit = 4 * (np.log(row[8]) - np.log(0.3)) + (1.5 if level in ("L4-L5", "L5-S1") else -1.0)
            probs.append(row)
            levels.append(level)
            patients.append(str(p))
            truth.append(rng.random() < 1 / (1 + np.exp(-logit)))
    return {"probs": np.stack(probs), "level": np.array(levels), "patient": np.array(patients), "y": np.array(truth)}


def test_the_fit_finds_the_relation_and_the_call_keeps_its_specificity():
    table = made_up_discs()
    cv = cross_validate(table, k=5)
    assert cv["auc"] > 0.8 and cv["auc_95ci"][0] < cv["auc"] < cv["auc_95ci"][1]
    assert cv["specificity"] >= 0.8  # nested: the threshold never saw the held-out patients
    head = final_head(table, cv)
    x = features(table["probs"], list(table["level"]))
    col = N_GRADES_BOTH + DISC_LEVELS.index("L5-S1")
    assert head.coef[8] > 0 and head.coef[col] > 0  # the bulging reading and the low level both raise it
    scores = [head.probability(p, lv) for p, lv in zip(table["probs"][:50], table["level"][:50], strict=True)]
    direct = 1 / (1 + np.exp(-(x[:50] @ np.asarray(head.coef) + head.intercept)))
    assert np.allclose(scores, direct, atol=1e-4)  # weights rounded to 6 places


def test_threshold_reaches_the_target_specificity_on_its_discs():
    rng = np.random.default_rng(1)
    scores, y = rng.random(400), rng.random(400) < 0.4
    t = threshold_for(scores, y, 0.87)
    assert (scores[~y] < t).mean() >= 0.86


def test_logistic_fit_matches_a_known_separator():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 2))
    y = rng.random(2000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))
    coef, b = fit_logistic(x, y.astype(float), l2=1e-6)
    assert np.allclose(coef, [2, -1], atol=0.25) and abs(b - 0.5) < 0.2
    assert auc(list(x @ coef + b), list(y)) > 0.8


def test_a_prior_pulls_the_fit_toward_it_as_strongly_as_its_ridge_says():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2)) * [1.0, 3.0] + [0.0, 5.0]  # unstandardised, off-centre: the prior's raw scale
    y = rng.random(300) < 1 / (1 + np.exp(-(2 * x[:, 0] + 0.3)))
    prior = (np.array([-1.0, 0.5]), -2.0)
    free, _ = fit_logistic(x, y.astype(float), l2=1e-6, prior=prior)
    held, _ = fit_logistic(x, y.astype(float), l2=1e4, prior=prior)
    assert np.allclose(held, prior[0], atol=1e-3)
    assert np.allclose(free, [2, 0], atol=0.5)  # a weak prior leaves the data's own fit
    between, _ = fit_logistic(x, y.astype(float), l2=0.1, prior=prior)
    assert free[0] > between[0] > held[0]


def test_head_round_trips_through_model_json():
    head = StenosisHead([0.1] * (N_GRADES_BOTH + 6), -0.5, 0.4, {"auc": 0.9})
    back = StenosisHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert back == head and StenosisHead.from_dict(None) is None


@pytest.mark.data
def test_the_shipped_model_reports_stenosis_per_disc_through_analyze(shared_data: Path, tmp_path: Path):
    from ai.data import load_dataset
    from dicomnode.cli import analyze_path

    path = load_dataset(shared_data)[0].path
    assert path is not None
    result = analyze_path(path, tmp_path / "out")
    discs = [lv for lv in result["levels"] if lv["kind"] == "disc"]
    assert len(discs) == 6
    for lv in discs:
        assert 0.0 <= lv["findings"]["stenosis"] <= 1.0 and isinstance(lv["stenosis"], bool)
    assert all(lv["stenosis"] is None for lv in result["levels"] if lv["kind"] == "vertebra")
