"""From grader probabilities to labels, with per-class biases tuned on cross-validation folds.

A grader trained on both data sets has two readings of a disc: the Tianchi disc head (normal / bulge / protrusion
/ extrusion) and SPIDER's herniation and bulging heads, each taught by another radiologist. The disc call mixes
them (`DiscRule`) with thresholds chosen on out-of-fold predictions of both sets, so that the operating point
can be set for specificity (a herniation mark a radiologist can trust) and not only for the Tianchi macro-F1.
Tianchi's Schmorl's node (v5, 14 examples in 150 studies) is read with SPIDER's endplate heads as well (SPIDER's
"endplate change" counts Schmorl's nodes): its own head alone was never learnt (held-out F1 0.02)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ai.labels import DISC_MAIN_LABELS, VERTEBRA_LABELS, level_kind
from ai.models import BULGING, DISC, FINDINGS, HERNIATION, N_GRADES_BOTH, PFIRRMANN, SPIDER_FINDINGS, V5, VERT

UP_ENDPLATE = FINDINGS.start + SPIDER_FINDINGS.index("up_endplate")
LOW_ENDPLATE = FINDINGS.start + SPIDER_FINDINGS.index("low_endplate")


@dataclass
class DiscRule:
    """Herniation first: p = (1 - herniation_mix) * P_tianchi(v3 or v4) + herniation_mix * P_spider(herniation);
    a herniation at p >= herniation_threshold, an extrusion when v4 holds at least extrusion_share of the
    Tianchi head's herniation probability. Otherwise bulge when the same mix of the two bulge readings reaches
    bulge_threshold, else normal."""

    herniation_mix: float = 0.5
    herniation_threshold: float = 0.5
    extrusion_share: float = 0.5
    bulge_mix: float = 0.5
    bulge_threshold: float = 0.5

    def call(self, probs: np.ndarray) -> tuple[str, float]:
        p = probs[DISC] / max(float(probs[DISC].sum()), 1e-9)
        herniated = float(p[2] + p[3])
        ph = (1 - self.herniation_mix) * herniated + self.herniation_mix * float(probs[HERNIATION])
        if ph >= self.herniation_threshold:
            share = float(p[3]) / max(herniated, 1e-9)
            return ("v4", ph * share) if share >= self.extrusion_share else ("v3", ph * (1 - share))
        bulge_t = float(p[1]) / max(float(p[0] + p[1]), 1e-9)
        pb = (1 - self.bulge_mix) * bulge_t + self.bulge_mix * float(probs[BULGING])
        return ("v2", (1 - ph) * pb) if pb >= self.bulge_threshold else ("v1", (1 - ph) * (1 - pb))


@dataclass
class Decision:
    """Log-probability offsets added before the arg-max, and the Schmorl's-node threshold; for a grader with
    SPIDER heads, the disc rule and the share of SPIDER's endplate reading in the Schmorl's-node score."""

    vertebra_bias: list[float] = field(default_factory=lambda: [0.0, 0.0])
    disc_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    v5_threshold: float = 0.5
    disc_rule: DiscRule | None = None
    v5_endplate_mix: float = 0.0

    def schmorl(self, probs: np.ndarray) -> float:
        """The Schmorl's-node score: (1 - mix) * P_tianchi(v5) + mix * the mean of SPIDER's upper and lower
        endplate-change probabilities (a grader without SPIDER heads: its v5 head alone)."""
        p = float(probs[V5])
        if self.v5_endplate_mix and len(probs) >= N_GRADES_BOTH:
            endplate = (float(probs[UP_ENDPLATE]) + float(probs[LOW_ENDPLATE])) / 2
            p = (1 - self.v5_endplate_mix) * p + self.v5_endplate_mix * endplate
        return p

    def labels(self, level: str, probs: np.ndarray) -> tuple[list[str], float]:
        """Labels and the confidence of the main one. probs: the grader outputs (softmaxed per head, yes/no
        findings sigmoid)."""
        if level_kind(level) == "vertebra":
            p = probs[VERT]
            i = int(np.argmax(np.log(p + 1e-9) + self.vertebra_bias))
            return [VERTEBRA_LABELS[i]], float(p[i])
        if self.disc_rule is not None and len(probs) >= N_GRADES_BOTH:
            main, conf = self.disc_rule.call(probs)
        else:
            p = probs[DISC]
            i = int(np.argmax(np.log(p + 1e-9) + self.disc_bias))
            main, conf = DISC_MAIN_LABELS[i], float(p[i])
        labels = [main]
        if self.schmorl(probs) >= self.v5_threshold:
            labels.append("v5")
        return labels, conf

    def pfirrmann(self, level: str, probs: np.ndarray) -> tuple[int, float] | None:
        """Pfirrmann grade 1..5 of a disc (the expected grade, rounded: the grades are ordered, and on SPIDER's held-out
        folds this is right as often as the arg-max and within one grade far more often, model card) and the
        probability of that grade; None for a vertebra or a grader without the head."""
        if level_kind(level) != "disc" or len(probs) < N_GRADES_BOTH:
            return None
        p = probs[PFIRRMANN] / max(float(probs[PFIRRMANN].sum()), 1e-9)
        grade = int(np.clip(np.round(float(np.dot(p, np.arange(1, 6)))), 1, 5))
        return grade, float(p[grade - 1])

    def to_dict(self) -> dict:
        d: dict = {"vertebra_bias": self.vertebra_bias, "disc_bias": self.disc_bias, "v5_threshold": self.v5_threshold}
        if self.disc_rule is not None:
            d["disc_rule"] = asdict(self.disc_rule)
        if self.v5_endplate_mix:
            d["v5_endplate_mix"] = self.v5_endplate_mix
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        rule = DiscRule(**d["disc_rule"]) if d.get("disc_rule") else None
        mix = float(d.get("v5_endplate_mix", 0.0))
        return cls(list(d["vertebra_bias"]), list(d["disc_bias"]), float(d["v5_threshold"]), rule, mix)
