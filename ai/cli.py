"""`dicomnode evaluate`: a model on annotated studies, scored by the official metric."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import load_dataset
from ai.evaluate import StudyResult, evaluate
from ai.infer import Analyzer


def evaluate_dir(data_dir: Path, model: str = "default", device: str = "auto") -> dict[str, Any]:
    analyzer = Analyzer.load(model, device)
    studies = load_dataset(data_dir)
    results = []
    seconds = []
    for st in studies:
        pixels, spacing = st.load()
        t0 = time.perf_counter()
        levels = analyzer.analyze(pixels, spacing)
        seconds.append(time.perf_counter() - t0)
        results.append(StudyResult(st, spacing, [lv.to_dict() for lv in levels]))
    report = evaluate(results)
    report["model_version"] = analyzer.version
    report["seconds_per_study"] = round(float(np.mean(seconds)), 4) if seconds else None
    return report
