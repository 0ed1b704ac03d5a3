"""Training recipes: what a run writes, and that every recipe knob survives save and load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dicomgen import data_subset

from ai.data import load_dataset
from ai.infer import Analyzer, Member
from ai.models import Grader, LandmarkNet
from ai.training.train import Recipe, _augment, run, run_landmarks


def test_input_size_and_crop_size_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    meta = {"width": 8, "input_size": 128, "crop_size": 48, "grader_arch": "resnet18"}
    model = Member(LandmarkNet(8), Grader(), meta, torch.device("cpu"))
    model.save(tmp_path)
    loaded = Member.load(tmp_path, "cpu")
    img = np.random.default_rng(0).random((300, 200), dtype=np.float32)
    shapes = []
    loaded.landmarks.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    xy, _ = loaded.locate(img)
    assert shapes == [(1, 1, 128, 128)]  # the input size comes from model.json, not the module constant
    assert np.allclose(xy, model.locate(img)[0], atol=2.0)  # fp16 on disk: a point moves a pixel at most
    crops = []
    loaded.grader.register_forward_hook(lambda m, i, o: crops.append(tuple(i[0].shape)))
    probs = loaded.grade(img, xy)
    assert crops == [(11, 1, 48, 48)] and probs.shape == (11, 7)


def test_an_older_model_json_without_crop_size_loads_with_the_defaults(tmp_path: Path):
    meta = {"width": 8, "grader_arch": "resnet18"}
    Member(LandmarkNet(8), Grader(), meta, torch.device("cpu")).save(tmp_path)
    crops = []
    loaded = Analyzer.load(tmp_path, "cpu")
    loaded.graders[0].grader.register_forward_hook(lambda m, i, o: crops.append(tuple(i[0].shape)))
    loaded.analyze(np.random.default_rng(0).random((100, 100), dtype=np.float32), (1.0, 1.0))
    assert crops == [(11, 1, 64, 64)]


def test_augmentation_shift_and_zoom_reach_the_landmarks():
    """The recipe's shift and zoom bound how far the target points move (m5 was trained with wider ones)."""
    x = torch.zeros(256, 1, 64, 64)
    pts = torch.full((256, 11, 2), 31.5)  # every landmark at the centre
    moved = lambda **kw: (_augment(x, pts, np.random.default_rng(0), **kw)[1] - 31.5).abs().amax().item()  # noqa: E731
    none = moved(zoom=(1.0, 1.0), shift=0.0)
    narrow, wide = moved(zoom=(1.0, 1.0), shift=0.1), moved(zoom=(1.0, 1.0), shift=0.4)
    assert none < 1e-3  # rotation and zoom keep the centre where it is
    assert 0.05 * 32 < narrow <= 0.1 * 32 * 1.5 + 1e-3 and 0.3 * 32 < wide <= 0.4 * 32 * 1.5 + 1e-3


@pytest.mark.data
def test_run_writes_cv_report_and_a_final_model_with_the_tuned_decision(shared_data: Path, tmp_path: Path):
    data = data_subset(shared_data, tmp_path / "data", 10)
    recipe = Recipe(lm_epochs=1, gr_epochs=1, width=8, input_size=128, crop_size=32)
    report = run(data, tmp_path / "out", recipe, folds=2, log=lambda m: None)
    out = tmp_path / "out"
    assert len(report["per_fold"]) == 2 and sum(m["studies"] for m in report["per_fold"]) == 10
    assert len(json.loads((out / "oof.json").read_text())) == 10
    assert json.loads((out / "cv.json").read_text())["recipe"]["crop_size"] == 32
    meta = json.loads((out / "model.json").read_text())
    assert meta["decision"] == report["decision"] and meta["cv_mean"] == report["cv_mean"]
    assert (meta["input_size"], meta["crop_size"]) == (128, 32)
    model = Analyzer.load(out, "cpu")
    assert model.int8_graders  # the final model's int8 activation ranges were measured on the training data
    study = load_dataset(data)[0]
    levels = model.analyze(*study.load())
    assert len(levels) == 11 and all(np.isfinite([lv.x for lv in levels]))


def test_a_zoom_tail_zooms_that_share_of_the_landmark_batches_further_in(monkeypatch: pytest.MonkeyPatch):
    import ai.training.train as train

    zooms: list[tuple[float, float]] = []
    real = train._augment

    def spy(x, pts, rng, zoom, shift):
        zooms.append(tuple(zoom))
        return real(x, pts, rng, zoom, shift)

    monkeypatch.setattr(train, "_augment", spy)
    item = type("Item", (), {})()
    item.net_in, item.box = torch.zeros(1, 64, 64), type("Box", (), {"to_input": lambda self, xy: xy})()
    item.xy, item.mask = np.full((11, 2), 30.0), np.ones(11, bool)
    recipe = Recipe(width=8, input_size=64, zoom_tail=(0.5, 1.3, 1.5))
    train.train_landmarks([item] * 8, 40, 0, lambda m: None, recipe)
    tail = sum(z == (1.3, 1.5) for z in zooms)
    assert set(zooms) == {(0.85, 1.2), (1.3, 1.5)} and 10 <= tail <= 30  # 40 batches, half of them, give or take


@pytest.mark.data
def test_landmarks_only_run_writes_fold_nets_and_their_held_out_points(shared_data: Path, tmp_path: Path):
    data = data_subset(shared_data, tmp_path / "data", 6)
    recipe = Recipe(lm_epochs=1, width=8, input_size=128, zoom_tail=(0.3, 1.2, 1.5))
    report = run_landmarks(data, tmp_path / "out", recipe, folds=2, log=lambda m: None)
    out = tmp_path / "out"
    oof = json.loads((out / "oof.json").read_text())
    assert len(oof) == 6 and {len(p["xy"]) for p in oof} == {11}
    assert len(report["per_fold"]) == 2 and 0.0 <= report["cv_mean"]["within_6mm"] <= 1.0
    for folder in (out, out / "fold1", out / "fold2"):
        member = Member.load(folder, "cpu")
        assert member.grader is None and member.meta["recipe"]["zoom_tail"] == [0.3, 1.2, 1.5]
    assert Analyzer.load(out, "cpu").graders == []  # a locating member: ai.training.ensemble --locate takes it


def test_landmarks_only_refuses_what_only_a_grader_run_can_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from dicomnode.cli import main

    for extra in (["--spider", str(tmp_path)], ["--landmarks-from", str(tmp_path)]):
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--landmarks-only", *extra]) == 2
        assert "--landmarks-only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.data
def test_a_resumed_run_trains_only_the_folds_a_cut_short_run_left_undone(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import shutil

    import ai.training.train as train

    data = data_subset(shared_data, tmp_path / "data", 6)
    recipe = Recipe(lm_epochs=1, gr_epochs=1, width=8, input_size=128, crop_size=32)
    out = tmp_path / "out"
    run(data, out, recipe, folds=2, final=False, log=lambda m: None)
    first = {p["study_uid"]: p for p in json.loads((out / "oof.json").read_text())}
    shutil.rmtree(out / "fold2")  # the run was stopped while training its second fold
    fits: list[int] = []
    real = train.fit
    monkeypatch.setattr(train, "fit", lambda items, *a, **kw: fits.append(len(items)) or real(items, *a, **kw))
    run(data, out, recipe, folds=2, final=False, log=lambda m: None, resume=True)
    assert fits == [3]  # fold 2 only, on the other fold's three studies
    again = {p["study_uid"]: p for p in json.loads((out / "oof.json").read_text())}
    assert again.keys() == first.keys()
    val1 = json.loads((out / "fold1" / "model.json").read_text())["val_studies"]
    for uid in val1:  # fold 1 read back from its fp16 weights: the same answers to rounding
        np.testing.assert_allclose(again[uid]["xy"], first[uid]["xy"], atol=1.0)
        np.testing.assert_allclose(again[uid]["probs"], first[uid]["probs"], atol=0.02)
    with pytest.raises(ValueError, match="another recipe"):
        run(
            data,
            out,
            Recipe(lm_epochs=1, gr_epochs=1, width=8, input_size=128, crop_size=48),
            folds=2,
            final=False,
            log=lambda m: None,
            resume=True,
        )
