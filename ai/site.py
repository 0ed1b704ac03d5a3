"""The site layout (what `dicomnode reviews export` writes: a folder with `labels.csv` carrying a reviewer's `call`
per disc, and `images/<patient>/<series>.dcm`): a hospital's own radiologists' reviews of the node's findings, and
the figures `dicomnode evaluate` reports on them.

Calls read from the node's output: its main disc label (v1 normal, v2 bulge, v3 protrusion, v4 extrusion) against
the reviewer's call; abnormal = any call but normal; herniation = protrusion or extrusion; Schmorl's node = v5 said;
canal stenosis = the node's `stenosis` call, ranked for the AUC by `findings.stenosis`. A disc whose level the node
does not name counts as called normal (probability 0) and under `site_unnamed`, so a study the node cannot read is
never quietly left out. A disc reviewed twice (same slice and level) counts once, with its latest review; a disc
whose stenosis was not rated (empty) is left out of the stenosis figures, one without a grade out of Pfirrmann's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai.labels import CALLS, call_of
from ai.lsmri import LOC_STEPS, auc
from ai.spider import _rate, disc_answers, labels_header, quadratic_kappa, read_labels, read_manufacturers

HERNIATED = ("protrusion", "extrusion")
METRIC_KEYS = [
    "site_loc_within_0175_step",
    "site_call_agreement",
    "site_abnormal_sensitivity",
    "site_abnormal_specificity",
    "site_abnormal_balanced_accuracy",
    "site_bulge_sensitivity",
    "site_bulge_specificity",
    "site_herniation_sensitivity",
    "site_herniation_specificity",
    "site_schmorl_agreement",
    "site_pfirrmann_accuracy",
    "site_pfirrmann_within_one",
    "site_pfirrmann_kappa",
    "site_stenosis_agreement",
    "site_stenosis_sensitivity",
    "site_stenosis_specificity",
    "site_stenosis_auc",
]


@dataclass
class SiteDisc:
    level: str
    x: float | None  # the reviewer's point: column, pixels of the slice (None: none exported)
    y: float | None
    step_px: float | None  # the local disc step: the spacing-free unit of the point check
    call: str  # CALLS
    schmorl: bool
    pfirrmann: int | None
    stenosis: bool | None  # None: not rated (left out of the stenosis figures)
    reviewer: str = ""
    reviewed_at: str = ""  # ISO 8601
    job_id: str = ""

    @property
    def abnormal(self) -> bool:
        return self.call != "normal"


@dataclass
class SiteStudy:
    patient: str
    study_uid: str
    instance_uid: str
    path: Path | None
    manufacturer: str = ""
    discs: dict[str, SiteDisc] = field(default_factory=dict)


def is_site(data: Path) -> bool:
    return Path(data).is_dir() and (Path(data) / "labels.csv").is_file() and "call" in labels_header(data)


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def load_site(data: Path) -> list[SiteStudy]:
    """Studies in the order of labels.csv (`read_labels` finds each slice's file). An unknown call is an error
    (the export writes only CALLS), not a disc quietly scored as normal."""
    out = []
    for path, rows in read_labels(data):
        first = rows[0]
        st = SiteStudy(first["patient"], first["study_uid"], first["sop_instance_uid"], path)
        for r in sorted(rows, key=lambda r: r.get("reviewed_at") or ""):  # the latest review of a disc last
            call = r["call"].strip().lower()
            if call not in CALLS:
                raise ValueError(f"{Path(data) / 'labels.csv'}: call {r['call']!r} at {r['level']} is none of {CALLS}")
            st.discs[r["level"]] = SiteDisc(
                r["level"],
                _number(r.get("x")),
                _number(r.get("y")),
                _number(r.get("step_px")),
                call,
                r.get("schmorl") == "1",
                int(r["pfirrmann"]) if r.get("pfirrmann") else None,
                r["stenosis"] == "1" if r.get("stenosis") else None,
                r.get("reviewer", ""),
                r.get("reviewed_at", ""),
                r.get("job_id", ""),
            )
        out.append(st)
    read_manufacturers(out)
    return out


def node_call(answer: dict[str, Any] | None) -> str:
    """The node's main disc call as a reviewer's word (a level it did not name: normal)."""
    return call_of(answer["labels"] if answer else [])


def _sens_spec(truth: np.ndarray, said: np.ndarray) -> tuple[float, float]:
    return _rate(int((truth & said).sum()), int(truth.sum())), _rate(int((~truth & ~said).sum()), int((~truth).sum()))


def site_metrics(studies: list[SiteStudy], predictions: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """predictions: SOP Instance UID -> the node's levels (`level`, `x`, `y`, `labels`, and for a disc `pfirrmann`,
    `stenosis` and `findings`); a study missing from it was not answered. A graded disc without a predicted grade
    counts as wrong for accuracy and within one and is left out of kappa; the point check counts the discs that
    carry a reviewer's point and step."""
    pairs = list(disc_answers(studies, predictions))
    discs = [d for d, _ in pairs]
    answers = [p for _, p in pairs]
    truth_call = np.array([d.call for d in discs], dtype=object)
    said_call = np.array([node_call(p) for p in answers], dtype=object)
    pointed = [(d, p) for d, p in pairs if d.x is not None and d.y is not None and d.step_px]
    near = sum(
        p is not None and float(np.hypot(p["x"] - d.x, p["y"] - d.y)) <= LOC_STEPS * float(d.step_px)
        for d, p in pointed
    )
    out: dict[str, Any] = {"site_studies": len(studies), "site_discs": len(discs)}
    out["site_unanswered"] = sum(st.instance_uid not in predictions for st in studies)
    out["site_unnamed"] = sum(p is None for p in answers)
    out["site_loc_within_0175_step"] = _rate(near, len(pointed))
    out["site_call_agreement"] = _rate(int((truth_call == said_call).sum()), len(discs))
    rated = [(d, p) for d, p in pairs if d.stenosis is not None]
    binary = {
        "abnormal": (truth_call != "normal", said_call != "normal"),
        "bulge": (truth_call == "bulge", said_call == "bulge"),
        "herniation": (np.isin(truth_call, HERNIATED), np.isin(said_call, HERNIATED)),
        "stenosis": (
            np.array([bool(d.stenosis) for d, _ in rated], bool),
            np.array([bool(p and p.get("stenosis")) for _, p in rated], bool),
        ),
    }
    for k, (truth, said) in binary.items():
        truth, said = truth.astype(bool), said.astype(bool)
        out[f"site_{k}_sensitivity"], out[f"site_{k}_specificity"] = _sens_spec(truth, said)
        out[f"site_{k}_positives"] = int(truth.sum())
    out["site_abnormal_balanced_accuracy"] = round(
        (out["site_abnormal_sensitivity"] + out["site_abnormal_specificity"]) / 2, 4
    )
    schmorl = [d.schmorl == bool(p and "v5" in p["labels"]) for d, p in pairs]
    out["site_schmorl_agreement"] = _rate(sum(schmorl), len(discs))
    truth, said = binary["stenosis"]
    out["site_stenosis_agreement"] = _rate(int((truth == said).sum()), len(rated))
    scores = [float(((p or {}).get("findings") or {}).get("stenosis", 0.0)) for _, p in rated]
    out["site_stenosis_auc"] = auc(scores, list(truth))
    graded = [(d.pfirrmann, (p or {}).get("pfirrmann")) for d, p in pairs if d.pfirrmann is not None]
    both = [(t, int(g)) for t, g in graded if g is not None]
    out["site_pfirrmann_graded"] = len(graded)
    out["site_pfirrmann_accuracy"] = _rate(sum(t == g for t, g in both), len(graded))
    out["site_pfirrmann_within_one"] = _rate(sum(abs(t - g) <= 1 for t, g in both), len(graded))
    out["site_pfirrmann_kappa"] = quadratic_kappa([t for t, _ in both], [g for _, g in both])
    return out
