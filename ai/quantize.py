"""int8 graders for CPU inference.

The graders are most of a study's CPU time after the landmark nets. With int8 weights *and* activations (torch.ao
FX post-training quantization, x86 kernels) a grader's 11 crops take about a third of the time, and on held-out
folds its probabilities are as good (model card). The activation ranges need real images, which a hospital's
node does not have, so they are measured once on the training slices and stored in the member's model.json
(`int8_activation_ranges`); at load they rebuild the int8 grader without any data.

    python -m ai.quantize --data DIR FOLDER   # FOLDER: a model folder or an ensemble's (every grading member)
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RANGES_KEY = "int8_activation_ranges"
ENGINE = "x86"  # fbgemm + oneDNN kernels; "qnnpack" is the ARM choice
CALIBRATION_STUDIES = 64  # histogram ranges settle well before this on the 150 training slices


def available() -> bool:
    """The x86 int8 kernels and the torch.ao FX API (deprecated in torch 2.14 in favour of torchao; where a later
    torch drops it, the graders run fp32 and tests/test_quantize.py says so)."""
    try:
        import torch.ao.quantization.quantize_fx  # noqa: F401
    except ImportError:
        return False
    return ENGINE in torch.backends.quantized.supported_engines


def is_int8(net: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in net.modules())


def _prepare(net: nn.Module, observer: type, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    with warnings.catch_warnings():  # the torch.ao FX API warns that it is moving to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import QConfig, QConfigMapping
        from torch.ao.quantization.observer import default_per_channel_weight_observer
        from torch.ao.quantization.quantize_fx import prepare_fx

        torch.backends.quantized.engine = ENGINE
        qconfig = QConfig(activation=observer.with_args(reduce_range=True), weight=default_per_channel_weight_observer)
        return prepare_fx(net.eval(), QConfigMapping().set_global(qconfig), example)


def _forget_traced_networks() -> None:
    """torch 2.14's FX quantization memoises `assert_and_get_unique_device` with an unbounded functools.cache keyed
    by the module, so every network it traces would stay in memory (a float grader, 43 MB, per int8 grader)."""
    from torch.ao.quantization.fx import utils

    clear = getattr(getattr(utils, "assert_and_get_unique_device", None), "cache_clear", None)
    if clear is not None:
        clear()


def example_inputs(crop_size: int, levels: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(levels, 1, crop_size, crop_size), torch.arange(levels)


def calibrate(grader: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[float]]:
    """Each activation's (low, high) range: a histogram search (less clipping error than min/max), written as the
    range a min/max observer turns into the same scale and zero point."""
    from torch.ao.quantization.observer import HistogramObserver

    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of crops")
    try:
        prepared = _prepare(copy.deepcopy(grader), HistogramObserver, batches[0])
        with torch.no_grad():
            for crops, levels in batches:
                prepared(crops, levels)
        ranges = {}
        for name, obs in prepared.named_modules():
            if isinstance(obs, HistogramObserver):
                scale, zero = (float(v) for v in obs.calculate_qparams())
                ranges[name] = [(obs.quant_min - zero) * scale, (obs.quant_max - zero) * scale]
        return ranges
    finally:
        _forget_traced_networks()


def quantized(grader: nn.Module, ranges: dict[str, list[float]], example: tuple[torch.Tensor, ...]) -> nn.Module:
    """The int8 grader from stored ranges; ValueError when they were measured on another network."""
    from torch.ao.quantization.observer import MinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    try:
        prepared = _prepare(grader, MinMaxObserver, example)
        observers = {name: obs for name, obs in prepared.named_modules() if type(obs) is MinMaxObserver}
        if set(observers) != set(ranges):
            raise ValueError(f"stored int8 ranges name {len(ranges)} activations, this network has {len(observers)}")
        for name, obs in observers.items():
            low, high = ranges[name]
            obs.min_val, obs.max_val = torch.tensor(float(low)), torch.tensor(float(high))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_fx(prepared)
        for node in model.graph.nodes:  # observer factories there close over the float modules (43 MB a grader)
            node.meta.pop("target_dtype_info", None)
        return model
    finally:
        _forget_traced_networks()


def calibrate_folder(folder: Path, items: list) -> int:
    """Measures and stores the ranges of every grader under `folder` (a model or an ensemble); returns how many.
    `items`: `ai.train.prepare`d studies; the crops are cut at their annotated points, the first
    CALIBRATION_STUDIES with all 11 levels."""
    from ai.infer import Analyzer, level_crops

    meta = json.loads((folder / "model.json").read_text())
    targets = [folder / m for m in meta["ensemble"]["grade"]] if "ensemble" in meta else [folder]
    chosen = [it for it in items if it.mask.all()][:CALIBRATION_STUDIES]
    for target in targets:
        model = Analyzer.load(target, "cpu", fused=False)  # the weights as stored (int8 graders dequantized)
        if model.grader is None:
            raise ValueError(f"{target} has no grader to calibrate")
        size = int(model.meta.get("crop_size", 64))
        batches = [(level_crops(torch.from_numpy(it.img01)[None], np.asarray(it.xy, np.float32), size=size),
                    torch.arange(len(it.xy))) for it in chosen]
        member = json.loads((target / "model.json").read_text())
        member[RANGES_KEY] = calibrate(model.grader, batches)
        (target / "model.json").write_text(json.dumps(member, indent=2) + "\n")
    return len(targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="annotated training slices (as for dicomnode train)")
    p.add_argument("folder", help="a model folder, or an ensemble folder (each grading member is calibrated)")
    args = p.parse_args()
    from ai.data import load_dataset
    from ai.train import prepare

    n = calibrate_folder(Path(args.folder), prepare(load_dataset(Path(args.data))))
    print(json.dumps({"calibrated_graders": n, "folder": args.folder}))


if __name__ == "__main__":
    main()
