"""The LSMRI layout (Lumbar Spine MRI Dataset, Jordan: a folder with `labels.csv` carrying `x`, `y`, `step_px`, and
`images/`): per-disc centre points and the annotators' labels, and the figures `dicomnode evaluate` reports on it.

Calls read from the node's output: bulge = the node says bulge, protrusion or extrusion (the source's "bulge" covers
bulges and herniations); canal stenosis = the node's `stenosis` call, ranked for the AUC by `findings.stenosis`.
A disc whose level the node does not name counts as missed and called normal (probability 0), so a study the node
cannot read is never quietly left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai.spider import (
    BULGE,
    HERNIATION,
    _rate,
    disc_answers,
    labels_header,
    quadratic_kappa,
    read_labels,
    read_manufacturers,
)

LOC_STEPS = 0.175  # a point counts when within this share of the local disc step (~6 mm at a 35 mm step)
CALLED_BULGE = set(BULGE) | set(HERNIATION)
METRIC_KEYS = [
    "lsmri_loc_within_0175_step",
    "lsmri_bulge_sensitivity",
    "lsmri_bulge_specificity",
    "lsmri_bulge_balanced_accuracy",
    "lsmri_stenosis_auc",
    "lsmri_stenosis_sensitivity",
    "lsmri_stenosis_specificity",
    "lsmri_pfirrmann_accuracy",
    "lsmri_pfirrmann_within_one",
    "lsmri_pfirrmann_kappa",
]


@dataclass
class LsmriDisc:
    level: str
    x: float  # column, pixels of the slice
    y: float
    step_px: float  # the local disc step: the spacing-free unit of the point check
    bulge: bool
    stenosis: bool
    pfirrmann: int | None


@dataclass
class LsmriStudy:
    patient: str
    study_uid: str
    instance_uid: str
    path: Path | None
    manufacturer: str = ""
    discs: dict[str, LsmriDisc] = field(default_factory=dict)


def is_lsmri(data: Path) -> bool:
    return Path(data).is_dir() and (Path(data) / "labels.csv").is_file() and "step_px" in labels_header(data)


def load_lsmri(data: Path) -> list[LsmriStudy]:
    """Studies in the order of labels.csv (`read_labels` finds each slice's file)."""
    out = []
    for path, rows in read_labels(data):
        first = rows[0]
        st = LsmriStudy(first["patient"], first["study_uid"], first["sop_instance_uid"], path)
        for r in rows:
            st.discs[r["level"]] = LsmriDisc(
                r["level"],
                float(r["x"]),
                float(r["y"]),
                float(r["step_px"]),
                r["bulge"] == "1",
                r["stenosis"] == "1",
                int(r["pfirrmann"]) if r.get("pfirrmann") else None,
            )
        out.append(st)
    read_manufacturers(out)
    return out


def auc(scores: list[float], truth: list[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    s, t = np.asarray(scores, float), np.asarray(truth, bool)
    pos, neg = s[t], s[~t]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater / (len(pos) * len(neg))), 4)


def lsmri_metrics(studies: list[LsmriStudy], predictions: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """predictions: SOP Instance UID -> the node's levels (`level`, `x`, `y`, `labels`, and for a disc `pfirrmann`,
    `stenosis` and `findings`); a study missing from it was not answered. A graded disc without a predicted grade
    counts as wrong for accuracy and within one and is left out of kappa."""
    discs = unnamed = near = 0
    counts = {k: [0, 0, 0, 0] for k in ("bulge", "stenosis")}  # tp, positives, tn, negatives
    scores, stenotic = [], []
    graded = exact = within = 0
    kt, kp = [], []
    for d, p in disc_answers(studies, predictions):
        discs += 1
        unnamed += p is None
        if p is not None:
            near += float(np.hypot(p["x"] - d.x, p["y"] - d.y)) <= LOC_STEPS * d.step_px
        said = {
            "bulge": bool(p and set(p["labels"]) & CALLED_BULGE),
            "stenosis": bool(p and p.get("stenosis")),
        }
        for k, truth in (("bulge", d.bulge), ("stenosis", d.stenosis)):
            c = counts[k]
            if truth:
                c[0] += said[k]
                c[1] += 1
            else:
                c[2] += not said[k]
                c[3] += 1
        scores.append(float(((p or {}).get("findings") or {}).get("stenosis", 0.0)))
        stenotic.append(d.stenosis)
        if d.pfirrmann is not None:
            graded += 1
            grade = p.get("pfirrmann") if p else None
            if grade is not None:
                exact += int(grade) == d.pfirrmann
                within += abs(int(grade) - d.pfirrmann) <= 1
                kt.append(d.pfirrmann)
                kp.append(int(grade))
    out: dict[str, Any] = {"lsmri_studies": len(studies), "lsmri_discs": discs, "lsmri_unnamed": unnamed}
    out["lsmri_unanswered"] = sum(st.instance_uid not in predictions for st in studies)
    out["lsmri_loc_within_0175_step"] = _rate(near, discs)
    for k, (tp, pos, tn, neg) in counts.items():
        sens, spec = _rate(tp, pos), _rate(tn, neg)
        out[f"lsmri_{k}_sensitivity"], out[f"lsmri_{k}_specificity"] = sens, spec
        out[f"lsmri_{k}_positives"] = pos
        if k == "bulge":
            out["lsmri_bulge_balanced_accuracy"] = round((sens + spec) / 2, 4)
    out["lsmri_stenosis_auc"] = auc(scores, stenotic)
    out["lsmri_pfirrmann_graded"] = graded
    out["lsmri_pfirrmann_accuracy"] = _rate(exact, graded)
    out["lsmri_pfirrmann_within_one"] = _rate(within, graded)
    out["lsmri_pfirrmann_kappa"] = quadratic_kappa(kt, kp)
    return out
