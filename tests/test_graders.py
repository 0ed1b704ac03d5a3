"""The graders' fine-tuning on LSMRI's grades (ai.training.graders): which discs carry a grade, and how a
fine-tuned grader is stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.infer import Member, level_crops
from ai.labels import LEVEL_INDEX
from ai.lsmri import LsmriDisc, LsmriStudy, load_lsmri
from ai.models import N_GRADES_BOTH, Grader
from ai.results import Located
from ai.training.graders import lsmri_items, save_grader
from ai.training.joint import spider_targets

LSMRI_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lsmri-t2"
CHAIN = np.stack([np.full(11, 150.0), 40.0 + 25.0 * np.arange(11)], 1)  # a regular chain, every net agreeing


class FixedLocator:
    """Locates every slice at CHAIN."""

    def locate_slices(self, pixels: list[np.ndarray]) -> list[Located]:
        return [Located(np.zeros_like(p), CHAIN.copy(), np.ones(11), np.ones(11)) for p in pixels]


def test_an_lsmri_grade_trains_only_the_located_disc_it_was_given_to():
    if not LSMRI_DATA.is_dir():
        pytest.skip(f"LSMRI data not found at {LSMRI_DATA}")
    real = load_lsmri(LSMRI_DATA)[0]  # its image; the discs are this test's
    near, far, ungraded = LEVEL_INDEX["L4-L5"], LEVEL_INDEX["L3-L4"], LEVEL_INDEX["L1-L2"]
    st = LsmriStudy(real.patient, real.study_uid, real.instance_uid, real.path)
    st.discs = {
        "L4-L5": LsmriDisc("L4-L5", CHAIN[near, 0] + 3, CHAIN[near, 1], 25.0, True, True, 4),  # 0.12 steps off
        "L3-L4": LsmriDisc("L3-L4", CHAIN[far, 0], CHAIN[far, 1] + 12, 25.0, False, False, 2),  # 0.48 steps off
        "L1-L2": LsmriDisc("L1-L2", CHAIN[ungraded, 0], CHAIN[ungraded, 1], 25.0, False, False, None),
    }
    [item] = lsmri_items([st], FixedLocator())
    assert np.flatnonzero(item.use).tolist() == [near]
    targets = spider_targets([item])
    assert targets["pfirrmann"][0].tolist() == [4 - 1 if i == near else -1 for i in range(11)]
    # LSMRI's bulge and stenosis labels mean other things than SPIDER's heads: no other head learns from them
    assert all((t < 0).all() for name, t in targets.items() if name != "pfirrmann")


def test_a_fine_tuned_grader_is_stored_int8_and_grades_as_before(tmp_path: Path):
    torch.manual_seed(0)
    net = Grader(outputs=N_GRADES_BOTH).eval()
    meta = {"crop_size": 32, "grader_outputs": N_GRADES_BOTH, "grader_arch": "resnet18"}
    save_grader(Member(None, net, meta, torch.device("cpu")), tmp_path, {"fine_tuned": {"epochs": 1}})
    stored = json.loads((tmp_path / "model.json").read_text())
    assert stored["fine_tuned"] == {"epochs": 1} and stored["crop_size"] == 32
    loaded = Member.load(tmp_path, "cpu", fused=False)
    assert loaded.landmarks is None and loaded.grader is not None  # a grading-only member, as in the ensemble
    img = torch.from_numpy(np.random.default_rng(0).random((300, 300), dtype=np.float32))[None]
    crops = level_crops(img, CHAIN, size=32)
    with torch.no_grad():
        before = net(crops, torch.arange(11))
        after = loaded.grader(crops, torch.arange(11))
    assert torch.allclose(before, after, atol=0.05 * float(before.abs().max()))  # int8 weights: close, not equal


def test_a_cut_run_goes_on_with_the_members_it_had_not_fine_tuned(tmp_path: Path):
    from ai.models import LandmarkNet
    from ai.training.landmarks import fine_tune_members

    report = {"epochs": 3, "lsmri": 10}
    for name, done in (("m1", report), ("m2", {"epochs": 3, "lsmri": 9}), ("m3", None)):
        meta = {"width": 8} | ({"fine_tuned": done} if done else {})
        Member(LandmarkNet(8), None, meta, torch.device("cpu")).save(tmp_path / name)
    tuned: list[tuple[int, str]] = []
    fine_tune_members(tmp_path, ["m1", "m2", "m3"], report, lambda k, name, member: tuned.append((k, name)), print)
    assert tuned == [(1, "m2"), (2, "m3")]  # m1 was done by this recipe; m2 by another
