"""`dicomnode evaluate`: a model on annotated studies, scored by the official metric (Tianchi's layout) or by
SPIDER's graded discs (a folder with labels.csv), or LSMRI's labelled disc points (labels.csv with x, y, step_px),
or a site's reviews of the node's findings (labels.csv with a reviewer's `call`: `dicomnode reviews export`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import find_annotations, load_dataset, read_slice
from ai.evaluate import StudyResult, evaluate
from ai.infer import Analyzer
from ai.lsmri import METRIC_KEYS as LSMRI_KEYS
from ai.lsmri import is_lsmri, load_lsmri, lsmri_metrics
from ai.orient import of_dataset
from ai.site import METRIC_KEYS as SITE_KEYS
from ai.site import is_site, load_site, site_metrics
from ai.spider import METRIC_KEYS as SPIDER_KEYS
from ai.spider import bootstrap_ci, by_manufacturer, is_spider, load_spider, spider_metrics


def evaluate_dir(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """A study that cannot be answered (its image missing or undecodable) stays in the score as unanswered, all
    its points missed, and is listed under `unanswered` with the reason: a test set is never scored on a quietly
    chosen subset. A folder with `labels.csv` is read as a site's reviews when it has a `call` column (checked first:
    it has LSMRI's `step_px` too), as LSMRI's when it has `step_px`, else as SPIDER's layout (`evaluate_spider`)."""
    if is_site(data_dir):
        return evaluate_site(data_dir, model, device, int8)
    if is_spider(data_dir):
        return evaluate_spider(data_dir, model, device, int8)
    if is_lsmri(data_dir):
        return evaluate_lsmri(data_dir, model, device, int8)
    studies = load_dataset(data_dir, require_images=False)
    if studies and all(st.path is None for st in studies):
        raise FileNotFoundError(f"none of the {len(studies)} annotated instances is among the files under {data_dir}")
    analyzer = Analyzer.load(model, device, int8=int8)
    answers, report = answer_all(analyzer, studies)
    report = (
        evaluate([StudyResult(st, spacing, levels) for st, (levels, spacing) in zip(studies, answers, strict=True)])
        | report
    )
    report["annotation_files"] = [str(p) for p in find_annotations(data_dir)]
    return report


def evaluate_spider(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """SPIDER's graded discs, matched by level name (no coordinates to check)."""
    return evaluate_discs(load_spider(data_dir), spider_metrics, SPIDER_KEYS, "spider", data_dir, model, device, int8)


def evaluate_lsmri(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """LSMRI's discs (centre points and the annotators' labels), matched by level name."""
    return evaluate_discs(load_lsmri(data_dir), lsmri_metrics, LSMRI_KEYS, "lsmri", data_dir, model, device, int8)


def evaluate_site(data_dir: Path, model: str = "default", device: str = "auto", int8: bool = True) -> dict[str, Any]:
    """A site's reviewed discs (a reviewer's call, point, Schmorl's node, Pfirrmann grade and stenosis per disc),
    matched by level name. Without `per_manufacturer`: `dicomnode evaluate`'s text output prints that for SPIDER's
    and LSMRI's keys only (the JSON of the other layouts keeps it)."""
    report = evaluate_discs(load_site(data_dir), site_metrics, SITE_KEYS, "site", data_dir, model, device, int8)
    report.pop("per_manufacturer", None)
    return report


def evaluate_discs(
    studies: list[Any],
    metrics: Any,
    keys: list[str],
    layout: str,
    data_dir: Path,
    model: str,
    device: str,
    int8: bool,
) -> dict[str, Any]:
    """A labels.csv layout's figures, per manufacturer and with patient-bootstrap intervals; an unreadable slice is
    unanswered, its discs missed and called normal."""
    if studies and all(st.path is None for st in studies):
        raise FileNotFoundError(f"none of the {len(studies)} labelled slices is among the files under {data_dir}")
    analyzer = Analyzer.load(model, device, int8=int8)
    answers, report = answer_all(analyzer, studies)
    predictions = {st.instance_uid: levels for st, (levels, _) in zip(studies, answers, strict=True) if levels}
    report = metrics(studies, predictions) | report
    report["per_manufacturer"] = by_manufacturer(studies, predictions, metrics)
    report["bootstrap_95ci"] = bootstrap_ci(studies, predictions, metrics, keys)
    report["layout"] = layout
    return report


def answer_all(
    analyzer: Analyzer, studies: Sequence[Any]
) -> tuple[list[tuple[list[dict], tuple[float, float]]], dict[str, Any]]:
    """Each study's levels on the stored pixel grid (where the annotations are), the slice turned for the nets as its
    ImageOrientationPatient says (a file without one is read as stored), with the slice's spacing; and what every
    report carries: `unanswered` (study UID -> why), model version, int8, seconds per study."""
    answers, seconds, unanswered = [], [], {}
    for st in studies:
        spacing, levels = (1.0, 1.0), []
        try:
            ds, pixels, spacing = read_slice(st.path, st.instance_uid)
            t0 = time.perf_counter()
            turn = of_dataset(ds, required=False)
            found = turn.levels_to_stored(analyzer.analyze(turn.image(pixels), spacing), pixels.shape)
            levels = [lv.to_dict() for lv in found]
            seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - missing file, undecodable pixels: recorded, not fatal
            unanswered[st.study_uid] = f"{type(exc).__name__}: {exc}"[:200]
        answers.append((levels, spacing))
    return answers, {
        "unanswered": unanswered,
        "model_version": analyzer.version,
        "int8_graders": analyzer.int8_graders,
        "seconds_per_study": round(float(np.mean(seconds)), 4) if seconds else None,
    }
