"""The chain checks that put back a vertebra a landmark net skipped and unfold a folded median, and the int8 grader
files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ai.chain import carry, repair_fold, repair_skip
from ai.infer import _weights, store_int8
from ai.models import Grader
from ai.training.ensemble import combine_oof

SPINE = np.stack([100.0 + 2.0 * np.arange(11), 20.0 * np.arange(11)], 1)  # a slightly tilted straight spine


def _skipped(above: int) -> np.ndarray:
    """The net named the points 0..above one vertebra (two levels) too high: a three-step gap below `above`."""
    xy = SPINE.copy()
    xy[: above + 1] = SPINE[: above + 1] - (SPINE[2] - SPINE[0])
    return xy


def test_a_regular_chain_is_left_alone():
    xy, source = repair_skip(SPINE)
    assert np.array_equal(xy, SPINE) and np.array_equal(source, np.arange(11))


@pytest.mark.parametrize("above", [0, 1, 4, 6, 9])
def test_a_skipped_vertebra_is_put_back_keeping_the_lower_part(above: int):
    xy, source = repair_skip(_skipped(above))
    assert np.allclose(xy, SPINE, atol=1e-6)
    inserted = [k for k in range(11) if source[k] < 0]
    assert inserted == [k for k in (above - 1, above) if k >= 0]
    assert all(source[k] == k + 2 for k in range(above - 1))  # renamed two levels down the spine
    assert all(source[k] == k for k in range(above + 1, 11))


def _folded(k: int) -> np.ndarray:
    """The levels 0..k+1 named one level (two points) too low: points k+2, k+3 lie back on k, k+1."""
    xy = SPINE.copy()
    xy[: k + 2] = SPINE[2 : k + 4]
    return xy


@pytest.mark.parametrize("k", [0, 3, 7])
def test_a_folded_chain_keeps_its_lower_copy_and_moves_the_part_above_one_level_up(k: int):
    xy, source = repair_fold(_folded(k))
    assert np.allclose(xy, SPINE, atol=1e-6)  # the straight spine back, its two top points extrapolated
    assert list(source[:2]) == [-1, -1]
    assert all(source[j] == j - 2 for j in range(2, k + 2)) and all(source[j] == j for j in range(k + 2, 11))


def test_an_unfolded_chain_and_a_skipped_one_are_no_fold():
    for chain in (SPINE, _skipped(6), SPINE * [1.0, 0.6]):  # 0.6: a compressed spine, evenly spaced, is no fold
        xy, source = repair_fold(chain)
        assert np.array_equal(xy, chain) and np.array_equal(source, np.arange(11))


def test_the_ensemble_median_is_unfolded_and_reads_as_uncertain(monkeypatch: pytest.MonkeyPatch):
    """Three locators that number the spine alike except at the bottom, where two fold back: the node's points are
    the straight spine again, and the locators that agree are counted at those points."""
    from ai.infer import Analyzer

    members = [_folded(7), _folded(7), SPINE]
    analyzer = Analyzer.__new__(Analyzer)
    looks = [[(m.astype(np.float32), np.ones(11, np.float32))] for m in members]
    monkeypatch.setattr(Analyzer, "member_points", lambda self, imgs: looks)
    xy, loc, agree = analyzer.points_many([np.zeros((8, 8), np.float32)])[0]
    assert np.allclose(xy, SPINE, atol=1e-4) and xy.dtype == np.float32
    assert list(loc[:2]) == [0.0, 0.0] and np.allclose(loc[2:], 1.0)  # extrapolated points: found by no net
    assert agree.min() < 1.0 and agree[10] == 1.0


def test_carry_moves_values_with_their_points():
    conf = np.linspace(0.1, 1.1, 11)
    _, source = repair_skip(_skipped(6))
    moved = carry(conf, source, inserted=0.0)
    assert moved[0] == pytest.approx(conf[2]) and moved[5] == moved[6] == 0.0 and moved[10] == conf[10]
    probs = np.arange(77.0).reshape(11, 7)
    kept = carry(probs, source)  # no value given: an inserted level keeps its own row
    assert np.array_equal(kept[0], probs[2]) and np.array_equal(kept[5], probs[5])


def test_the_ensemble_oof_repairs_each_member_before_the_median():
    oof = lambda xy: [{"study_uid": "s", "xy": xy.tolist(), "loc": [1.0] * 11, "probs": [[0.5] * 7] * 11}]  # noqa: E731
    out = combine_oof(["s"], [oof(_skipped(6)), oof(_skipped(4)), oof(SPINE + 1)], [oof(SPINE)])
    assert np.allclose(out[0]["xy"], SPINE, atol=1.0 + 1e-6)  # unrepaired, the median would take the skips
    loc = np.asarray(out[0]["loc"])  # a point put in a gap counts as not found by that member
    assert np.allclose(loc[[3, 4, 5, 6]], 2 / 3) and np.allclose(np.delete(loc, [3, 4, 5, 6]), 1.0)


def test_the_ensemble_oof_unfolds_the_median_as_the_node_does():
    oof = lambda xy: [{"study_uid": "s", "xy": xy.tolist(), "loc": [1.0] * 11, "probs": [[0.5] * 7] * 11}]  # noqa: E731
    out = combine_oof(["s"], [oof(_folded(6)), oof(_folded(6)), oof(SPINE)], [oof(SPINE)])
    assert np.allclose(out[0]["xy"], SPINE, atol=1e-6)  # the median alone would keep the fold
    assert out[0]["loc"][:2] == [0.0, 0.0]


@pytest.mark.data
def test_no_annotated_spine_looks_like_a_skip(shared_data: Path):
    """The threshold must never fire on a real chain: all 150 annotated studies pass unchanged."""
    from ai.data import load_dataset, target_array

    changed = []
    for study in load_dataset(shared_data):
        xy, mask = target_array(study)
        if mask.all() and not np.array_equal(repair_skip(xy)[1], np.arange(11)):
            changed.append(study.study_uid)
    assert changed == []


def test_int8_weights_load_close_to_the_originals_at_half_the_size(tmp_path: Path):
    torch.manual_seed(0)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in Grader().state_dict().items()}
    path = tmp_path / "grader.safetensors"
    save_file(sd, path)
    before = path.stat().st_size
    store_int8(path)
    assert path.stat().st_size < 0.55 * before
    loaded = _weights(path)
    assert loaded.keys() == sd.keys()
    for k, v in sd.items():
        w = v.float()
        if w.ndim >= 2:  # one int8 step of the channel's largest weight at most
            step = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / 127
            assert ((loaded[k] - w).abs() <= step / 2 + 1e-3 * step + 1e-8).all(), k
        else:
            assert torch.equal(loaded[k], w), k
    grader = Grader()
    grader.load_state_dict(loaded)  # the file still builds the network
