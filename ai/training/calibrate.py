"""Confidences that mean something: one temperature per head (vertebra, disc, Schmorl's node), fitted on
out-of-fold predictions by log-loss, and the expected calibration error to show what it bought.

A temperature divides the logits; it never changes which class wins, only how sure the SR says it is."""

from __future__ import annotations

from typing import Any

import numpy as np

from ai.labels import DISC_MAIN_LABELS, LEVELS, VERTEBRA_LABELS, level_kind
from ai.models import DISC, V5, VERT

TEMPS = np.exp(np.linspace(np.log(0.3), np.log(5.0), 60))


def scale_softmax(p: np.ndarray, t: float) -> np.ndarray:
    logp = np.log(np.clip(p, 1e-9, 1.0)) / t
    e = np.exp(logp - logp.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def scale_sigmoid(p: np.ndarray, t: float) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)) / t))


def examples(studies: list[Any], preds: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head: (probabilities, true class) at every annotated level. Localisation misses are kept: the
    confidence is read off the crop the model actually graded."""
    vp, vt, dp, dt, sp, st = [], [], [], [], [], []
    for study, pred in zip(studies, preds, strict=True):
        probs = np.asarray(pred["probs"])
        for i, level in enumerate(LEVELS):
            point = study.points.get(level)
            if point is None or not point.labels:
                continue
            if level_kind(level) == "vertebra":
                if point.labels[0] in VERTEBRA_LABELS:
                    vp.append(probs[i, VERT])
                    vt.append(VERTEBRA_LABELS.index(point.labels[0]))
            else:
                main = [lab for lab in point.labels if lab in DISC_MAIN_LABELS]
                if main:
                    dp.append(probs[i, DISC])
                    dt.append(DISC_MAIN_LABELS.index(main[0]))
                sp.append(probs[i, V5])
                st.append(int("v5" in point.labels))
    return {
        "vertebra": (np.array(vp), np.array(vt)),
        "disc": (np.array(dp), np.array(dt)),
        "v5": (np.array(sp), np.array(st)),
    }


def _nll(head: str, p: np.ndarray, y: np.ndarray, t: float) -> float:
    if head == "v5":
        q = scale_sigmoid(p, t)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    q = scale_softmax(p, t)
    return float(-np.mean(np.log(np.clip(q[np.arange(len(y)), y], 1e-9, 1))))


def fit_temperatures(studies: list[Any], preds: list[dict]) -> dict[str, float]:
    ex = examples(studies, preds)
    return {
        head: float(min(TEMPS, key=lambda t: _nll(head, p, y, t))) if len(y) else 1.0 for head, (p, y) in ex.items()
    }


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of 'confidence of the chosen class' against 'it was right'."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def calibration_error(studies: list[Any], preds: list[dict], temps: dict[str, float] | None = None) -> dict[str, float]:
    temps = temps or {"vertebra": 1.0, "disc": 1.0, "v5": 1.0}
    out = {}
    for head, (p, y) in examples(studies, preds).items():
        if not len(y):
            continue
        if head == "v5":
            q = scale_sigmoid(p, temps[head])
            conf, correct = np.maximum(q, 1 - q), (q >= 0.5) == (y == 1)
        else:
            q = scale_softmax(p, temps[head])
            conf, correct = q.max(1), q.argmax(1) == y
        out[head] = round(ece(conf, correct.astype(float)), 4)
    return out
