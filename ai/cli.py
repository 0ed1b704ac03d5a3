"""`dicomnode evaluate`: a model on annotated studies, scored by the official metric."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import find_annotations, load_dataset
from ai.evaluate import StudyResult, evaluate
from ai.infer import Analyzer


def evaluate_dir(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """A study that cannot be answered (its image missing or undecodable) stays in the score as unanswered, all
    its points missed, and is listed under `unanswered` with the reason: a test set is never scored on a quietly
    chosen subset."""
    studies = load_dataset(data_dir, require_images=False)
    if studies and all(st.path is None for st in studies):
        raise FileNotFoundError(f"none of the {len(studies)} annotated instances is among the files under {data_dir}")
    analyzer = Analyzer.load(model, device, int8=int8)
    results = []
    seconds = []
    unanswered: dict[str, str] = {}
    for st in studies:
        spacing, levels = (1.0, 1.0), []
        try:
            pixels, spacing = st.load()
            t0 = time.perf_counter()
            levels = [lv.to_dict() for lv in analyzer.analyze(pixels, spacing)]
            seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - missing file, undecodable pixels: recorded, not fatal
            unanswered[st.study_uid] = f"{type(exc).__name__}: {exc}"[:200]
        results.append(StudyResult(st, spacing, levels))
    report = evaluate(results)
    report["unanswered"] = unanswered
    report["annotation_files"] = [str(p) for p in find_annotations(data_dir)]
    report["model_version"] = analyzer.version
    report["int8_graders"] = analyzer.int8_graders
    report["seconds_per_study"] = round(float(np.mean(seconds)), 4) if seconds else None
    return report
