"""int8 graders: ranges measured once, the int8 net rebuilt from them at load, fp32 whenever they do not fit."""

from __future__ import annotations

import copy
import gc
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from dicomgen import phantom
from test_fused import _trained_looking
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from ai import int8
from ai.data import load_dataset
from ai.imaging import normalise
from ai.infer import Analyzer, Member, level_crops
from ai.labels import LEVELS
from ai.models import Grader, LandmarkNet
from ai.training import quantize

pytestmark = pytest.mark.skipif(not int8.available(), reason="this CPU build of torch has no x86 int8 kernels")


def _crops(seed: int, n: int = 11) -> torch.Tensor:
    """Crops along a phantom spine: the kind of input the ranges are measured on."""
    img = normalise(phantom(256, 256, seed).astype(np.float32))
    xy = np.stack([np.full(n, 128.0), np.linspace(40, 216, n)], 1).astype(np.float32)
    return level_crops(torch.from_numpy(img)[None], xy, size=32)


def test_stored_ranges_rebuild_the_int8_grader_that_calibration_made():
    """The ranges are all that is kept of calibration: rebuilt from them (via JSON), the int8 grader is the one
    torch's own calibrate-and-convert gives."""
    net = _trained_looking(Grader())
    levels = torch.arange(11)
    batches = [(_crops(s), levels) for s in range(6)]
    ranges = quantize.calibrate(net, batches)
    assert ranges and all(low <= 0.0 <= high for low, high in ranges.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = prepare_fx(copy.deepcopy(net), get_default_qconfig_mapping(int8.ENGINE), batches[0])
        with torch.no_grad():
            for b in batches:
                reference(*b)
        reference = convert_fx(reference)
    fresh = Grader()
    fresh.load_state_dict(net.state_dict())
    rebuilt = int8.quantized(fresh, json.loads(json.dumps(ranges)), int8.example_inputs(32))
    assert int8.is_int8(rebuilt)
    with torch.inference_mode():
        want, got, fp32 = reference(_crops(99), levels), rebuilt(_crops(99), levels), net(_crops(99), levels)
    assert torch.allclose(got, want, atol=1e-5)
    assert np.corrcoef(got.flatten(), fp32.flatten())[0, 1] > 0.95  # int8 rounding, not another function
    with pytest.raises(ValueError, match="activations"):
        int8.quantized(Grader(), dict(list(ranges.items())[:-1]), int8.example_inputs(32))


def _live_float_mb() -> float:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on every live object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        return (
            sum(
                t.numel() * t.element_size()
                for t in gc.get_objects()
                if isinstance(t, torch.Tensor) and t.is_floating_point()
            )
            / 2**20
        )


def test_building_an_int8_grader_keeps_no_float_network_alive():
    """torch 2.14's FX quantization holds on to every network it traces (a functools.cache keyed by the module,
    observer factories in the converted graph's node meta): 43 MB of float weights per int8 grader if not undone."""
    levels = torch.arange(11)

    def build() -> torch.nn.Module:
        net = _trained_looking(Grader())
        ranges = quantize.calibrate(net, [(_crops(s), levels) for s in range(2)])
        return int8.quantized(net, ranges, int8.example_inputs(32))

    def fail_calibrating() -> None:
        net = _trained_looking(Grader())
        with pytest.raises(RuntimeError):  # a two-channel batch after a good one: fails mid-calibration
            quantize.calibrate(net, [(_crops(0), levels), (torch.zeros(11, 2, 32, 32), levels)])

    before = _live_float_mb()
    model = build()
    assert int8.is_int8(model)
    assert _live_float_mb() - before < 1.0  # float biases and scales only; the grader's weights are 43 MB
    fail_calibrating()
    assert _live_float_mb() - before < 1.0  # a calibration that failed leaves its traced copy behind neither


def _model(folder: Path, ranges: dict | None) -> Path:
    torch.manual_seed(0)
    Member(LandmarkNet(8), _trained_looking(Grader()), {"width": 8, "crop_size": 32}, torch.device("cpu")).save(folder)
    if ranges is not None:
        meta = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps(dict(meta, **{int8.RANGES_KEY: ranges})))
    return folder


def test_a_model_loads_int8_only_where_its_ranges_fit(tmp_path: Path):
    plain = Member.load(_model(tmp_path / "plain", None), "cpu")
    ranges = quantize.calibrate(plain.grader, [(_crops(s), torch.arange(11)) for s in range(4)])  # fused fp32 net
    wrong = {k + "_renamed": v for k, v in ranges.items()}
    assert not int8.is_int8(plain.grader)
    assert int8.is_int8(Member.load(_model(tmp_path / "int8", ranges), "cpu").grader)
    assert not int8.is_int8(Analyzer.load(_model(tmp_path / "int8", ranges), "cpu", int8=False).graders[0].grader)
    fallback = Analyzer.load(_model(tmp_path / "wrong", wrong), "cpu")  # another network's ranges: fp32, not a crash
    assert not int8.is_int8(fallback.graders[0].grader)
    img = np.random.default_rng(0).random((200, 160), dtype=np.float32)
    assert len(fallback.analyze(img, (0.7, 0.7))) == len(LEVELS)
    xy, _ = plain.locate(img)  # the failed int8 build left the fp32 grader as it was: same weights, same grades
    assert np.allclose(fallback.grade(img, xy), plain.grade(img, xy), atol=1e-5)


def test_the_shipped_graders_run_int8():
    """Fails when a torch upgrade renames the activations: rerun `python -m ai.training.quantize` on the weights."""
    model = Analyzer.load("default", "cpu")
    assert model.graders and all(int8.is_int8(m.grader) for m in model.graders) and model.int8_graders
    assert not Analyzer.load("default", "cpu", int8=False).int8_graders


@pytest.mark.data
def test_shipped_int8_graders_grade_real_slices_as_fp32_does(shared_data: Path):
    q8, fp32 = Analyzer.load("default", "cpu"), Analyzer.load("default", "cpu", int8=False)
    same = total = 0
    for study in load_dataset(shared_data)[:12]:
        img = normalise(study.load()[0])
        xy, _ = fp32.locate(img)
        p8, p32 = q8.grade(img, xy), fp32.grade(img, xy)
        assert np.abs(p8 - p32).max() < 0.1
        for i, level in enumerate(LEVELS):
            same += q8.decision.labels(level, p8[i])[0] == fp32.decision.labels(level, p32[i])[0]
            total += 1
    assert same / total >= 0.95
