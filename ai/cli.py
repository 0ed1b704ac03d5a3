"""`dicomnode evaluate`: a model on annotated studies, scored by the official metric."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import find_annotations, load_dataset
from ai.evaluate import StudyResult, evaluate
from ai.imaging import read_file
from ai.infer import Analyzer
from ai.orient import Canonical, of_dataset
from ai.spider import by_manufacturer, is_spider, load_spider, spider_metrics


def evaluate_dir(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """A study that cannot be answered (its image missing or undecodable) stays in the score as unanswered, all
    its points missed, and is listed under `unanswered` with the reason: a test set is never scored on a quietly
    chosen subset. A folder with `labels.csv` is read as SPIDER's layout (`evaluate_spider`)."""
    if is_spider(data_dir):
        return evaluate_spider(data_dir, model, device, int8)
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
            levels = analyze_stored(analyzer, pixels, spacing, st.path)
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


def analyze_stored(analyzer: Analyzer, pixels: np.ndarray, spacing: tuple[float, float],
                   path: Path | None) -> list[dict[str, Any]]:
    """Levels on the stored pixel grid (where the annotations are), the slice turned for the nets as its
    ImageOrientationPatient says; a file without one is read as stored."""
    turn = of_dataset(read_file(path, stop_before_pixels=True), required=False) if path else Canonical()
    levels = [lv.to_dict() for lv in analyzer.analyze(turn.image(pixels), spacing)]
    if not turn.identity:
        xy = turn.to_stored(np.array([[lv["x"], lv["y"]] for lv in levels]), pixels.shape)
        for lv, (x, y) in zip(levels, xy):
            lv["x"], lv["y"] = round(float(x), 2), round(float(y), 2)
    return levels


def evaluate_spider(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """SPIDER's graded discs, matched by level name (no coordinates to check); an unreadable slice is unanswered,
    its discs called normal."""
    studies = load_spider(data_dir)
    if studies and all(st.path is None for st in studies):
        raise FileNotFoundError(f"none of the {len(studies)} graded slices is among the files under {data_dir}")
    analyzer = Analyzer.load(model, device, int8=int8)
    predictions: dict[str, list[dict[str, Any]]] = {}
    unanswered: dict[str, str] = {}
    seconds = []
    for st in studies:
        try:
            pixels, spacing = st.load()
            t0 = time.perf_counter()
            predictions[st.instance_uid] = analyze_stored(analyzer, pixels, spacing, st.path)
            seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - missing file, undecodable pixels: recorded, not fatal
            unanswered[st.study_uid] = f"{type(exc).__name__}: {exc}"[:200]
    report = spider_metrics(studies, predictions)
    report["per_manufacturer"] = by_manufacturer(studies, predictions)
    report["unanswered"] = unanswered
    report["layout"] = "spider"
    report["model_version"] = analyzer.version
    report["int8_graders"] = analyzer.int8_graders
    report["seconds_per_study"] = round(float(np.mean(seconds)), 4) if seconds else None
    return report
