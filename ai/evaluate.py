"""The official Tianchi Spark metric and the seed report's figures, computed from predictions.

Official: a prediction is matched to ground truth by level name; it is a hit when it lies < 6 mm away
(PixelSpacing of that slice). Each label of a ground-truth point counts once per class column (7 columns:
disc v1..v5, vertebra v1..v2); a label that is not hit is a false negative, a predicted label that is not a
hit is a false positive. Score = macro-F1 over the 7 columns.
Seed (report §4.5): a point counts when within 8 px and its class is right; recall = TP / GT points,
precision = TP / predicted points, 7-class accuracy = right class among the points localised within 8 px.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai.data import Study
from ai.decide import Decision
from ai.labels import LEVELS, SCORED_CLASSES, level_kind

HIT_MM = 6.0
SEED_HIT_PX = 8.0
# The headline figures of a report, in the order the CV tables show them.
METRIC_KEYS = [
    "tianchi_macro_f1",
    "within_6mm",
    "seed_recall",
    "seed_precision",
    "seed_7class_accuracy",
    "mean_error_mm",
    "all_levels_hit",
    "tianchi_macro_f1_single_label",
]


@dataclass
class StudyResult:
    study: Study
    spacing: tuple[float, float]  # (row, column) mm
    levels: list[dict[str, Any]]  # each: level, x, y, labels


def seed_class(kind: str, labels: Iterable[str]) -> str | None:
    """The seed's 7 classes: vertebra v1/v2, disc v1-v4, disc 'v5 only'."""
    labels = sorted(labels)
    if not labels:
        return None
    if kind == "vertebra":
        return f"vertebra-{labels[0]}"
    main = [label for label in labels if label != "v5"]
    return f"disc-{main[0]}" if main else "disc-v5"


def single_label(results: list[StudyResult]) -> list[StudyResult]:
    """Each predicted point with its main label only, as the official evaluator reads a prediction (one disease code
    per point: a Schmorl's node beside a disc grade is dropped)."""
    return [StudyResult(r.study, r.spacing, [dict(p, labels=p["labels"][:1]) for p in r.levels]) for r in results]


def evaluate(results: list[StudyResult], single_label_figure: bool = True) -> dict[str, Any]:
    """The figures of METRIC_KEYS, per-class counts, and `tianchi_macro_f1_single_label`: the official metric with
    one label per predicted point (ours may add Schmorl's node to a disc grade; the official evaluator cannot).
    Tuning loops leave that second pass out (single_label_figure=False)."""
    out = _evaluate(results)
    if single_label_figure:
        out["tianchi_macro_f1_single_label"] = _evaluate(single_label(results))["tianchi_macro_f1"]
    return out


def _evaluate(results: list[StudyResult]) -> dict[str, Any]:
    tp = {c: 0 for c in SCORED_CLASSES}
    fp = {c: 0 for c in SCORED_CLASSES}
    fn = {c: 0 for c in SCORED_CLASSES}
    points = hits = all_hit = 0
    errors_mm: list[float] = []
    seed_tp = seed_near = seed_pred = seed_gt = 0
    for r in results:
        sy, sx = r.spacing
        pred = {p["level"]: p for p in r.levels}
        seed_pred += len(r.levels)
        study_hits = 0
        for level, gt in r.study.points.items():
            kind = level_kind(level)
            points += 1
            p = pred.get(level)
            dist_mm = dist_px = float("inf")
            if p is not None:
                dx, dy = p["x"] - gt.x, p["y"] - gt.y
                dist_mm = float(np.hypot(dx * sx, dy * sy))
                dist_px = float(np.hypot(dx, dy))
                errors_mm.append(dist_mm)
            hit = dist_mm < HIT_MM
            hits += hit
            study_hits += hit
            plabels = set(p["labels"]) if p is not None else set()
            for label in gt.labels:
                c = (kind, label)
                if c not in tp:
                    continue
                if hit and label in plabels:
                    tp[c] += 1
                else:
                    fn[c] += 1
            if p is not None:
                for label in plabels:
                    c = (kind, label)
                    if c in fp and not (hit and label in gt.labels):
                        fp[c] += 1
            seed_gt += bool(gt.labels)
            if dist_px < SEED_HIT_PX and gt.labels:
                seed_near += 1
                if p is not None and seed_class(kind, p["labels"]) == seed_class(kind, gt.labels):
                    seed_tp += 1
        all_hit += study_hits == len(LEVELS)
        # predictions at levels the ground truth lacks are false positives too
        for level, p in pred.items():
            if level not in r.study.points:
                for label in p["labels"]:
                    c = (level_kind(level), label)
                    if c in fp:
                        fp[c] += 1
    per_class = {}
    for c in SCORED_CLASSES:
        denom = 2 * tp[c] + fp[c] + fn[c]
        per_class[f"{c[0]}_{c[1]}"] = {
            "f1": (2 * tp[c] / denom) if denom else 0.0,
            "tp": tp[c],
            "fp": fp[c],
            "fn": fn[c],
        }
    macro = float(np.mean([v["f1"] for v in per_class.values()]))
    return {
        "tianchi_macro_f1": round(macro, 4),
        "within_6mm": round(hits / points, 4) if points else 0.0,
        "seed_recall": round(seed_tp / seed_gt, 4) if seed_gt else 0.0,
        "seed_precision": round(seed_tp / seed_pred, 4) if seed_pred else 0.0,
        "seed_7class_accuracy": round(seed_tp / seed_near, 4) if seed_near else 0.0,
        "mean_error_mm": round(float(np.mean(errors_mm)), 3) if errors_mm else None,
        "all_levels_hit": round(all_hit / len(results), 4) if results else 0.0,
        "studies": len(results),
        "points": points,
        "per_class": per_class,
    }


def results_for(items: Sequence[Any], preds: Sequence[dict], decision: Decision) -> list[StudyResult]:
    """Stored predictions (points and probabilities per study) read through a decision rule: how CV tunes and
    scores a rule without running the nets again. items: anything with `study` and `spacing`."""
    res = []
    for it, p in zip(items, preds, strict=True):
        levels = []
        for i, level in enumerate(LEVELS):
            labels, conf = decision.labels(level, np.asarray(p["probs"][i]))
            levels.append(
                {"level": level, "x": p["xy"][i][0], "y": p["xy"][i][1], "labels": labels, "confidence": conf}
            )
        res.append(StudyResult(it.study, it.spacing, levels))
    return res
