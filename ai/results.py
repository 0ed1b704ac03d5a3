"""What a model says about a slice, without torch: the pipeline, the report builders and the admin commands read
these, and none of them should load a deep-learning library to do so."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class LevelResult:
    level: str
    kind: str
    x: float  # column, pixels of the analysed slice
    y: float  # row
    labels: list[str]
    confidence: float  # of the grading
    localisation: float  # heatmap mass near the peak, 0..1 (an ensemble's: times `agreement`; 0: put in a gap)
    agreement: float = 1.0  # share of an ensemble's landmark nets within AGREE_SPACINGS of the median point
    pfirrmann: int | None = None  # disc degeneration grade 1..5 (a grader with SPIDER heads; None for a vertebra)
    pfirrmann_confidence: float | None = None
    findings: dict[str, float] | None = None  # a disc's other findings (SPIDER's, stenosis): probability of each
    stenosis: bool | None = None  # spinal canal stenosis called at the model's operating point (None: no such head)

    @property
    def outlined(self) -> bool:
        """Marked as abnormal in the GSPS and the previews: a disc graded abnormal or called stenotic (vertebral
        degeneration is too common to outline)."""
        return self.kind == "disc" and (any(label != "v1" for label in self.labels) or bool(self.stenosis))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["x"], d["y"] = round(self.x, 2), round(self.y, 2)
        d["confidence"], d["localisation"] = round(self.confidence, 4), round(self.localisation, 4)
        d["agreement"] = round(self.agreement, 4)
        if self.pfirrmann_confidence is not None:
            d["pfirrmann_confidence"] = round(self.pfirrmann_confidence, 4)
        if self.findings is not None:
            d["findings"] = {k: round(v, 4) for k, v in self.findings.items()}
        return d


@dataclass
class Located:
    """A slice's points before grading: what slice selection compares."""

    img01: np.ndarray
    xy: np.ndarray  # (11, 2)
    loc: np.ndarray  # (11,) heatmap confidence
    agreement: np.ndarray  # (11,)

    @property
    def localisation(self) -> np.ndarray:
        return self.loc * self.agreement

    @property
    def score(self) -> float:
        """Mean localisation: how confidently this slice shows the whole lumbar spine."""
        return float(np.mean(self.localisation))


def numbering_uncertain(levels: list[LevelResult]) -> bool:
    """True when the landmark nets disagree at most levels: one of them put the whole chain a vertebra off, so
    the level names (L1..L5) may be shifted even where the points look right. Measured on the CV folds: members
    agree on 133 of 150 studies; the 17 they do not hold 38 of the 106 points outside 6 mm."""
    return bool(levels) and float(np.median([lv.agreement for lv in levels])) < 1.0
