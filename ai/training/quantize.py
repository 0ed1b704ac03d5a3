"""Measures the int8 graders' activation ranges on training slices and stores them in model.json (`ai.int8`
rebuilds the int8 graders from them at load). A training tool: the runtime never imports it.

    python -m ai.training.quantize --data DIR FOLDER   # FOLDER: a model folder or an ensemble's (every grading member)
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ai.infer import Member, level_crops
from ai.int8 import RANGES_KEY, forget_traced_networks, prepare_observed

CALIBRATION_STUDIES = 64  # histogram ranges settle well before this on the 150 training slices


def calibrate(grader: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[float]]:
    """Each activation's (low, high) range: a histogram search (less clipping error than min/max), written as the
    range a min/max observer turns into the same scale and zero point."""
    from torch.ao.quantization.observer import HistogramObserver

    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of crops")
    try:
        prepared = prepare_observed(copy.deepcopy(grader), HistogramObserver, batches[0])
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
        forget_traced_networks()


def calibrate_folder(folder: Path, items: list) -> int:
    """Measures and stores the ranges of every grader under `folder` (a model or an ensemble); returns how many.
    `items`: `ai.data.prepare`d studies; the crops are cut at their annotated points, the first
    CALIBRATION_STUDIES with all 11 levels."""
    meta = json.loads((folder / "model.json").read_text())
    targets = [folder / m for m in meta["ensemble"]["grade"]] if "ensemble" in meta else [folder]
    chosen = [it for it in items if it.mask.all()][:CALIBRATION_STUDIES]
    for target in targets:
        model = Member.load(target, "cpu", fused=False)  # the weights as stored (int8 graders dequantized)
        if model.grader is None:
            raise ValueError(f"{target} has no grader to calibrate")
        size = int(model.meta.get("crop_size", 64))
        batches = [
            (
                level_crops(torch.from_numpy(it.img01)[None], np.asarray(it.xy, np.float32), size=size),
                torch.arange(len(it.xy)),
            )
            for it in chosen
        ]
        member = json.loads((target / "model.json").read_text())
        member[RANGES_KEY] = calibrate(model.grader, batches)
        (target / "model.json").write_text(json.dumps(member, indent=2) + "\n")
    return len(targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="annotated training slices (as for dicomnode train)")
    p.add_argument("folder", help="a model folder, or an ensemble folder (each grading member is calibrated)")
    args = p.parse_args()
    from ai.data import load_dataset, prepare

    n = calibrate_folder(Path(args.folder), prepare(load_dataset(Path(args.data))))
    print(json.dumps({"calibrated_graders": n, "folder": args.folder}))


if __name__ == "__main__":
    main()
