"""The SPIDER layout (a folder with `labels.csv` and `images/`): a radiologist's per-disc grades without
coordinates, and the figures `dicomnode evaluate` reports on it.

The node's disc labels are the Tianchi scheme; on SPIDER they are read as calls: herniation = protrusion or
extrusion (v3, v4), bulging = bulge (v2), abnormal = either. A disc whose level the node does not name counts as
called normal (and under `unnamed`), so a study the node cannot read is never quietly left out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import load_slice
from ai.imaging import read_file

HERNIATION = ("v3", "v4")
BULGE = ("v2",)
PFIRRMANN_GRADES = (1, 2, 3, 4, 5)
# SPIDER's grades of one disc that the grader learns (the rest of labels.csv is read but not learnt).
GRADE_FIELDS = (
    "disc_herniation",
    "disc_bulging",
    "pfirrmann",
    "modic",
    "up_endplate",
    "low_endplate",
    "narrowing",
    "spondylolisthesis",
)
METRIC_KEYS = [
    "spider_abnormal_sensitivity",
    "spider_abnormal_specificity",
    "spider_abnormal_balanced_accuracy",
    "spider_herniation_sensitivity",
    "spider_herniation_specificity",
    "spider_herniation_balanced_accuracy",
    "spider_bulging_sensitivity",
    "spider_bulging_specificity",
    "spider_pfirrmann_accuracy",
    "spider_pfirrmann_within_one",
    "spider_pfirrmann_kappa",
]


@dataclass
class SpiderDisc:
    level: str  # T12-L1 .. L5-S1
    grades: dict[str, int]  # GRADE_FIELDS

    @property
    def herniation(self) -> bool:
        return bool(self.grades["disc_herniation"])

    @property
    def bulging(self) -> bool:
        return bool(self.grades["disc_bulging"])

    @property
    def abnormal(self) -> bool:
        return self.herniation or self.bulging


@dataclass
class SpiderStudy:
    patient: str
    study_uid: str
    instance_uid: str
    path: Path | None
    manufacturer: str = ""
    spacing_flags: list[str] = field(default_factory=list)
    discs: dict[str, SpiderDisc] = field(default_factory=dict)

    def load(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Pixels as float32 and (row, column) spacing in mm (often doubtful on SPIDER: see its README)."""
        return load_slice(self.path, self.instance_uid)


def is_spider(data: Path) -> bool:
    return Path(data).is_dir() and (Path(data) / "labels.csv").is_file() and "step_px" not in labels_header(data)


def labels_header(data: Path) -> list[str]:
    with open(Path(data) / "labels.csv", newline="") as f:
        return next(csv.reader(f), [])


def read_labels(data: Path) -> list[tuple[Path | None, list[dict[str, str]]]]:
    """The rows of a labels.csv folder grouped by slice, in file order, with the slice's file: `images/<patient>/
    <series>.dcm`, else found by its SOP Instance UID anywhere under the folder, else None (scored as unanswered).
    Shared by SPIDER's layout and LSMRI's."""
    data = Path(data)
    groups: dict[str, list[dict[str, str]]] = {}
    with open(data / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["sop_instance_uid"], []).append(row)
    index: dict[str, Path] | None = None
    out = []
    for uid, rows in groups.items():
        path: Path | None = data / "images" / rows[0]["patient"] / f"{rows[0]['series']}.dcm"
        if path is None or not path.is_file():
            if index is None:
                from ai.data import index_instances

                index = index_instances(data)
            path = index.get(uid)
        out.append((path, rows))
    return out


def load_spider(data: Path) -> list[SpiderStudy]:
    """Studies of a SPIDER folder, in the order of labels.csv (`read_labels` finds each slice's file)."""
    out = []
    for path, rows in read_labels(data):
        first = rows[0]
        st = SpiderStudy(
            first["patient"],
            first["study_uid"],
            first["sop_instance_uid"],
            path,
            spacing_flags=[s for s in first.get("spacing_flags", "").split(";") if s],
        )
        for row in rows:
            st.discs[row["level"]] = SpiderDisc(row["level"], {k: int(row[k]) for k in GRADE_FIELDS if row.get(k, "")})
        out.append(st)
    read_manufacturers(out)
    return out


def _rate(hit: int, total: int) -> float:
    return round(hit / total, 4) if total else 0.0


def quadratic_kappa(truth: Iterable[int], pred: Iterable[int], grades: tuple[int, ...] = PFIRRMANN_GRADES) -> float:
    """Cohen's kappa with quadratic weights: how the Pfirrmann literature reports agreement between readers."""
    t, p = np.asarray(list(truth)), np.asarray(list(pred))
    if len(t) == 0:
        return 0.0
    k = len(grades)
    ti, pi = t - grades[0], p - grades[0]
    observed = np.zeros((k, k))
    np.add.at(observed, (ti, pi), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(t)
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    denom = (w * expected).sum()
    return round(float(1 - (w * observed).sum() / denom), 4) if denom else 0.0


def disc_answers(studies: list[Any], predictions: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[Any, Any]]:
    """Each labelled disc with the node's answer at its level (None where the node did not name that level)."""
    for st in studies:
        named = {p["level"]: p for p in predictions.get(st.instance_uid, []) if p.get("kind", "disc") == "disc"}
        for level, d in st.discs.items():
            yield d, named.get(level)


def spider_metrics(studies: list[SpiderStudy], predictions: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """predictions: SOP Instance UID -> the node's levels (each with `level`, `labels`, and `pfirrmann` for a disc);
    a study missing from it was not answered. Pfirrmann figures count a disc without a predicted grade as wrong
    (accuracy, within one) and leave it out of kappa."""
    tp = {k: 0 for k in ("abnormal", "herniation", "bulging")}
    pos = dict(tp)
    tn, neg = dict(tp), dict(tp)
    unnamed = discs = exact = within = 0
    kt, kp = [], []
    for d, p in disc_answers(studies, predictions):
        discs += 1
        labels = set(p["labels"]) if p else set()
        unnamed += p is None
        said = {"herniation": bool(labels & set(HERNIATION)), "bulging": bool(labels & set(BULGE))}
        said["abnormal"] = said["herniation"] or said["bulging"]
        truth = {"herniation": d.herniation, "bulging": d.bulging, "abnormal": d.abnormal}
        for k in tp:
            if truth[k]:
                pos[k] += 1
                tp[k] += said[k]
            else:
                neg[k] += 1
                tn[k] += not said[k]
        grade = p.get("pfirrmann") if p else None
        if "pfirrmann" in d.grades and grade is not None:
            exact += int(grade) == d.grades["pfirrmann"]
            within += abs(int(grade) - d.grades["pfirrmann"]) <= 1
            kt.append(d.grades["pfirrmann"])
            kp.append(int(grade))
    graded = sum("pfirrmann" in d.grades for st in studies for d in st.discs.values())
    out: dict[str, Any] = {"studies": len(studies), "discs": discs, "unnamed": unnamed}
    for k in tp:
        sens, spec = _rate(tp[k], pos[k]), _rate(tn[k], neg[k])
        out[f"spider_{k}_sensitivity"], out[f"spider_{k}_specificity"] = sens, spec
        out[f"spider_{k}_balanced_accuracy"] = round((sens + spec) / 2, 4)
        out[f"spider_{k}_positives"] = pos[k]
    out["spider_pfirrmann_accuracy"] = _rate(exact, graded)
    out["spider_pfirrmann_within_one"] = _rate(within, graded)
    out["spider_pfirrmann_kappa"] = quadratic_kappa(kt, kp)
    return out


def by_manufacturer(
    studies: list[Any], predictions: dict[str, list[dict[str, Any]]], metrics: Any = None
) -> dict[str, Any]:
    """The same figures (`metrics`, default SPIDER's) per scanner manufacturer (Philips' two spellings as one):
    where a model carries over."""
    metrics = metrics or spider_metrics
    groups: dict[str, list[Any]] = {}
    for st in studies:
        name = "Philips" if st.manufacturer.lower().startswith("philips") else (st.manufacturer or "unknown")
        groups.setdefault(name, []).append(st)
    return {name: metrics(group, predictions) for name, group in sorted(groups.items())}


def bootstrap_ci(
    studies: list[Any], predictions: dict[str, list[dict[str, Any]]], metrics: Any, keys: list[str], n: int = 200
) -> dict[str, list[float]]:
    """95 % intervals of `keys` over patients drawn with replacement (one slice a patient in these sets), seed 0:
    what a figure on this many patients could have been."""
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n):
        sample = [studies[i] for i in rng.integers(0, len(studies), len(studies))]
        m = metrics(sample, predictions)
        for k in keys:
            if m.get(k) is not None:
                draws[k].append(float(m[k]))
    return {k: [round(float(v), 4) for v in np.percentile(d, (2.5, 97.5))] for k, d in draws.items() if d}


def read_manufacturers(studies: list[Any]) -> None:
    """Each slice's Manufacturer from its header (the figures per scanner make)."""
    for st in studies:
        if st.path is not None:
            try:
                st.manufacturer = str(read_file(st.path, stop_before_pixels=True).get("Manufacturer", ""))
            except Exception:  # noqa: BLE001 - an unreadable file is scored as unanswered elsewhere
                st.manufacturer = ""


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
