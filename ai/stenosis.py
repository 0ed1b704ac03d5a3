"""Spinal canal stenosis per disc, read from what the graders already say of it.

A logistic regression on the log-probabilities of every grader head at the disc (Tianchi's disc grades, SPIDER's
herniation, bulging, Pfirrmann and findings) and the disc's level, fitted on LSMRI's annotated discs at the node's
own points (`ai/training/stenosis.py`, cross-validated by patient; model card). Kept in model.json as
"stenosis_head", so it costs nothing at run time and needs no new network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ai.labels import DISC_LEVELS

EPS = 1e-4


def features(probs: np.ndarray, level: str | list[str]) -> np.ndarray:
    """(n, K + 6): log of each head's probability and the level one-hot; probs (K,) or (n, K)."""
    p = np.atleast_2d(np.asarray(probs, float))
    levels = [level] if isinstance(level, str) else level
    onehot = np.array([[lv == d for d in DISC_LEVELS] for lv in levels], float)
    return np.concatenate([np.log(np.clip(p, EPS, 1.0)), onehot], 1)


@dataclass
class StenosisHead:
    coef: list[float]
    intercept: float
    threshold: float  # the call's operating point: chosen for specificity on the training folds
    cv: dict[str, Any] = field(default_factory=dict)  # what the fit measured, by patient (model card)

    def probability(self, probs: np.ndarray, level: str) -> float:
        z = float(features(probs, level)[0] @ np.asarray(self.coef) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> StenosisHead | None:
        return cls(**d) if d else None
