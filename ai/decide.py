"""From grader probabilities to labels, with per-class biases tuned on cross-validation folds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ai.labels import DISC_MAIN_LABELS, VERTEBRA_LABELS, level_kind
from ai.models import DISC, V5, VERT


@dataclass
class Decision:
    """Log-probability offsets added before the arg-max, and the Schmorl's-node threshold."""

    vertebra_bias: list[float] = field(default_factory=lambda: [0.0, 0.0])
    disc_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    v5_threshold: float = 0.5

    def labels(self, level: str, probs: np.ndarray) -> tuple[list[str], float]:
        """Labels and the confidence of the main one. probs: the 7 grader outputs (softmaxed per head, v5
        sigmoid)."""
        if level_kind(level) == "vertebra":
            p = probs[VERT]
            i = int(np.argmax(np.log(p + 1e-9) + self.vertebra_bias))
            return [VERTEBRA_LABELS[i]], float(p[i])
        p = probs[DISC]
        i = int(np.argmax(np.log(p + 1e-9) + self.disc_bias))
        labels = [DISC_MAIN_LABELS[i]]
        if probs[V5] >= self.v5_threshold:
            labels.append("v5")
        return labels, float(p[i])

    def to_dict(self) -> dict:
        return {"vertebra_bias": self.vertebra_bias, "disc_bias": self.disc_bias, "v5_threshold": self.v5_threshold}

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        return cls(list(d["vertebra_bias"]), list(d["disc_bias"]), float(d["v5_threshold"]))
