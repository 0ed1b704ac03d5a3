"""The ensemble model: median points, mean grades, and its assembly from trained members."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dicomgen import data_subset

from ai.decide import Decision
from ai.imaging import SpineBox, spine_geometry
from ai.infer import AGREE_SPACINGS, Analyzer, Member
from ai.models import Grader, LandmarkNet
from ai.results import LevelResult, numbering_uncertain
from ai.training.ensemble import assemble, combine_oof


def _member(folder: Path, seed: int, grader: bool = True, size: int = 64) -> Path:
    torch.manual_seed(seed)
    meta = {"width": 8, "input_size": size, "crop_size": 32, "grader_arch": "resnet18"}
    Member(LandmarkNet(8), Grader() if grader else None, meta, torch.device("cpu")).save(folder)
    return folder


def _ensemble_folder(root: Path) -> Path:
    for name, seed, grader, size in (("a", 1, True, 64), ("b", 2, True, 96), ("c", 3, False, 64)):
        _member(root / name, seed, grader, size)
    meta = {
        "ensemble": {"members": ["a", "b", "c"], "locate": ["a", "b", "c"], "grade": ["a", "b"]},
        "decision": Decision().to_dict(),
        "version": "test",
    }
    (root / "model.json").write_text(json.dumps(meta))
    return root


def test_ensemble_takes_the_median_point_and_the_mean_grade(tmp_path: Path):
    ens = Analyzer.load(_ensemble_folder(tmp_path), "cpu")
    assert len(ens.locators) == 3 and len(ens.graders) == 2
    img = np.random.default_rng(0).random((200, 160), dtype=np.float32)
    points = [m.locate(img)[0] for m in ens.locators]
    xy, _ = ens.locate(img)
    assert np.allclose(xy, np.median(np.stack(points), 0))
    assert not np.allclose(points[0], points[1])  # the members disagree, so the median is doing something
    probs = ens.grade(img, xy)
    assert np.allclose(probs, (ens.graders[0].grade(img, xy) + ens.graders[1].grade(img, xy)) / 2)
    levels = ens.analyze(img * 1000, (0.5, 0.5))
    assert len(levels) == 11 and levels[0].x == pytest.approx(xy[0, 0])
    _, spacing = spine_geometry(xy.astype(np.float32))
    far = np.linalg.norm(np.stack(points) - xy[None], axis=2) > AGREE_SPACINGS * np.maximum(spacing, 1.0)
    assert np.allclose([lv.agreement for lv in levels], 1 - far.mean(0))


def test_candidate_slices_located_in_one_batch_get_the_points_of_one_at_a_time(tmp_path: Path):
    ens = Analyzer.load(_ensemble_folder(tmp_path), "cpu")
    rng = np.random.default_rng(1)
    slices = [rng.random(shape, dtype=np.float32) * 900 for shape in ((200, 160), (200, 160), (240, 240))]
    batch = ens.locate_slices(slices)
    for pixels, found in zip(slices, batch, strict=True):
        alone = ens.locate_slices([pixels])[0]
        assert np.allclose(found.xy, alone.xy, atol=1e-3) and np.allclose(found.loc, alone.loc, atol=1e-5)
        assert np.array_equal(found.agreement, alone.agreement)
    assert not np.allclose(batch[0].xy, batch[1].xy)  # each slice its own points


def test_numbering_is_uncertain_when_the_nets_disagree_at_most_levels():
    def study(agreements: list[float]) -> list[LevelResult]:
        return [LevelResult("L1", "vertebra", 0, 0, ["v1"], 0.9, 0.9, a) for a in agreements]

    assert not numbering_uncertain(study([1.0] * 11))
    assert not numbering_uncertain(study([2 / 3] * 3 + [1.0] * 8))  # a few levels: local misses, not numbering
    assert numbering_uncertain(study([2 / 3] * 8 + [1.0] * 3))
    assert not numbering_uncertain([])


def test_combine_oof_outvotes_a_member_one_level_off():
    right = np.stack([np.full(11, 100.0), 20.0 * np.arange(11)], 1)
    shifted = right + [0.0, 20.0]  # the whole chain one level down
    oof = lambda xy, p: [{"study_uid": "s", "xy": xy.tolist(), "loc": [1.0] * 11, "probs": [p] * 11}]  # noqa: E731
    out = combine_oof(
        ["s"],
        [oof(right, [1.0] * 7), oof(right + 1, [1.0] * 7), oof(shifted, [1.0] * 7)],
        [oof(right, [0.2] * 7), oof(right, [0.6] * 7)],
    )
    assert np.allclose(out[0]["xy"], right + [0.0, 1.0])  # a mean would put every point 7 px down the spine
    assert np.allclose(out[0]["probs"], 0.4)


def test_assemble_refuses_to_write_over_a_member(tmp_path: Path):
    member = _member(tmp_path / "default", 1)
    with pytest.raises(ValueError, match="holds a member"):
        assemble(tmp_path, tmp_path, [member], [member])


def _ten_studies(shared_data: Path, tmp_path: Path) -> tuple[Path, list, list[np.ndarray]]:
    """Ten annotated studies, prepared for 64-px nets, in two folds."""
    from ai.data import load_dataset
    from ai.training.train import folds_of, prepare

    data = data_subset(shared_data, tmp_path / "data", 10)
    items = prepare(load_dataset(data), 64)
    return data, items, folds_of(len(items), 2, 0)


@pytest.mark.data
def test_assemble_scores_the_members_out_of_fold_and_loads(shared_data: Path, tmp_path: Path):
    from ai.data import load_dataset
    from ai.training.train import predict

    data, items, val = _ten_studies(shared_data, tmp_path)
    members = []
    for name, seed, grader in (("a", 1, True), ("b", 2, True), ("c", 3, False)):
        folder = _member(tmp_path / name, seed, grader)
        model = Member.load(folder, "cpu")
        if model.grader is None:  # a locating-only member still records probabilities in its oof.json
            model.grader = Member.load(tmp_path / "a", "cpu").grader
        (folder / "oof.json").write_text(json.dumps(predict(model, [items[i] for v in val for i in v])))
        members.append(folder)
    report = assemble(data, tmp_path / "ens", members, members[:2], folds=2)
    assert len(report["per_fold"]) == 2 and sum(m["studies"] for m in report["per_fold"]) == 10
    meta = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert meta["ensemble"] == {"members": ["m1", "m2", "m3"], "locate": ["m1", "m2", "m3"], "grade": ["m1", "m2"]}
    assert meta["decision"] == report["decision"]
    assert not (tmp_path / "ens" / "m3" / "grader.safetensors").exists()
    ens = Analyzer.load(tmp_path / "ens", "cpu")
    assert ens.int8_graders  # the graders' activation ranges were measured on the data as they were copied
    levels = ens.analyze(*load_dataset(data)[0].load())
    assert len(levels) == 11


def test_tianchi_heads_come_from_the_named_graders_and_spider_heads_from_those_that_have_them(tmp_path: Path):
    """A grader trained on Tianchi alone (7 outputs) and one trained on both sets (19): with tianchi_heads naming the
    first, the Tianchi classes are read from it alone and the SPIDER ones (herniation, bulging, Pfirrmann...) from the
    second; without, the Tianchi classes are the mean of both. The second has no landmark net of its own."""
    from ai.decide import DiscRule
    from ai.infer import combine_grades
    from ai.models import N_GRADES, N_GRADES_BOTH

    _member(tmp_path / "t", 1)
    torch.manual_seed(2)
    meta = {"width": 8, "input_size": 64, "crop_size": 32, "grader_arch": "resnet18", "grader_outputs": N_GRADES_BOTH}
    Member(
        LandmarkNet(8),
        Grader(outputs=N_GRADES_BOTH),
        dict(meta, decision=Decision(disc_rule=DiscRule()).to_dict()),
        torch.device("cpu"),
    ).save(tmp_path / "j")
    (tmp_path / "j" / "landmarks.safetensors").unlink()  # a grading-only member, as ai.training.ensemble copies one
    spec = {"members": ["t", "j"], "locate": ["t"], "grade": ["t", "j"], "tianchi_heads": ["t"]}
    (tmp_path / "model.json").write_text(
        json.dumps({"ensemble": spec, "version": "test", "decision": Decision(disc_rule=DiscRule()).to_dict()})
    )
    ens = Analyzer.load(tmp_path, "cpu")
    img = np.random.default_rng(0).random((200, 160), dtype=np.float32)
    xy, _ = ens.locate(img)
    t, j = (m.grade(img, xy) for m in ens.graders)
    probs = ens.grade(img, xy)
    assert probs.shape == (11, N_GRADES_BOTH)
    assert np.allclose(probs[:, :N_GRADES], t) and np.allclose(probs[:, N_GRADES:], j[:, N_GRADES:])
    assert np.allclose(combine_grades([t, j])[:, :N_GRADES], (t + j[:, :N_GRADES]) / 2)
    assert all(lv.pfirrmann in (1, 2, 3, 4, 5) for lv in ens.analyze(img * 1000, (1.0, 1.0)) if lv.kind == "disc")
    assert combine_grades([t, t]).shape == (11, N_GRADES)  # no grader with SPIDER heads: Tianchi's only


def test_spine_box_is_a_square_of_spine_lengths_around_the_chain_and_maps_points_back():
    xy = np.stack([np.linspace(140, 160, 11), np.linspace(100, 300, 11)], 1).astype(np.float32)
    box = SpineBox.around(xy, 400, 300, 2.0)
    assert box.side == 400 and (box.x0, box.y0) == (-50, 0)  # 2 x 200 px, centred on the chain
    img = np.random.default_rng(0).random((400, 300), dtype=np.float32)
    cut = box.cut(img)
    assert cut.shape == (400, 400)
    assert np.array_equal(cut[:, 50:350], img) and not cut[:, :50].any() and not cut[:, 350:].any()
    assert np.allclose(box.to_image(np.array([[50.0, 20.0]])), [[0.0, 20.0]])
    squeezed = SpineBox.around(np.full((11, 2), 150.0, np.float32), 400, 300, 2.0)
    assert squeezed.side == 160  # a chain of no length is scaled as a fifth of the slice


def test_a_model_with_a_spine_box_locates_a_second_time_inside_it(tmp_path: Path):
    folder = _ensemble_folder(tmp_path)
    img = np.random.default_rng(2).random((200, 160), dtype=np.float32)
    once = Analyzer.load(folder, "cpu")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "roi_spine_lengths": 2.1}))
    twice = Analyzer.load(folder, "cpu")
    first = [m.locate(img)[0] for m in once.locators]
    box = SpineBox.around(np.median(np.stack(first), 0), 200, 160, 2.1)
    for member, found in zip(twice.locators, twice.member_points([img]), strict=True):
        xy, loc = found[0]
        again, again_loc = member.locate(box.cut(img))
        assert np.allclose(xy, box.to_image(again), atol=1e-3) and np.allclose(loc, again_loc, atol=1e-5)
    assert not np.allclose(twice.locate(img)[0], once.locate(img)[0])  # the second look moved the points


def test_spine_box_past_the_slice_is_black_there():
    img = np.ones((100, 80), np.float32)
    corner = SpineBox(60, 70, 50).cut(img)  # reaches past the right and bottom edges
    assert corner[:30, :20].all() and not corner[30:, :].any() and not corner[:, 20:].any()
    assert not SpineBox(200, 200, 40).cut(img).any()  # wholly outside: nothing to see, no error


@pytest.mark.data
def test_assemble_with_roi_locates_by_the_fold_models_checks_their_folds_and_is_kept(shared_data: Path, tmp_path: Path):
    from ai.training.ensemble import roi_oof
    from ai.training.train import predict

    data, items, val = _ten_studies(shared_data, tmp_path)
    members = []
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        folder = _member(tmp_path / name, seed)
        for k, v in enumerate(val):
            meta = json.loads((_member(folder / f"fold{k + 1}", seed + 10 * (k + 1)) / "model.json").read_text())
            meta["val_studies"] = [items[i].study.study_uid for i in v]
            (folder / f"fold{k + 1}" / "model.json").write_text(json.dumps(meta))
        (folder / "oof.json").write_text(json.dumps(predict(Member.load(folder, "cpu"), items)))
        members.append(folder)
    found = roi_oof(members, items, val, 2.1)
    fold1 = Analyzer([Member.load(m / "fold1", "cpu", int8_grader=False) for m in members], [], Decision(), {})
    fold1.meta["roi_spine_lengths"] = 2.1
    first = items[val[0][0]]
    assert np.allclose(found[0][0]["xy"], fold1.member_points([first.img01])[0][0][0], atol=1e-3)
    stored = json.loads((members[0] / "oof.json").read_text())
    assert not np.allclose(found[0][0]["xy"], next(p["xy"] for p in stored if p["study_uid"] == first.study.study_uid))
    assemble(data, tmp_path / "ens", members, members[:2], folds=2, roi=2.1)
    assert json.loads((tmp_path / "ens" / "model.json").read_text())["roi_spine_lengths"] == 2.1
    assemble(data, tmp_path / "kept", [], members[:2], folds=2, keep_locators=tmp_path / "ens")
    assert json.loads((tmp_path / "kept" / "model.json").read_text())["roi_spine_lengths"] == 2.1  # looks as it did
    meta = json.loads((members[1] / "fold2" / "model.json").read_text())
    (members[1] / "fold2" / "model.json").write_text(json.dumps({**meta, "val_studies": meta["val_studies"][1:]}))
    with pytest.raises(ValueError, match="folds do not match"):
        roi_oof(members, items, val, 2.1)
