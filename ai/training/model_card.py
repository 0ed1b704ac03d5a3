"""Renders the cross-validation tables of a training report (cv.json) as Markdown for the model card.

python -m ai.training.model_card ai/weights/default/cv.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ai.evaluate import METRIC_KEYS as KEYS
from ai.labels import SCORED_CLASSES
from ai.spider import METRIC_KEYS as SPIDER_KEYS

CLASSES = [f"{kind}_{label}" for kind, label in SCORED_CLASSES]  # the keys of a report's per_class
SHORT = {k: k.removeprefix("spider_") for k in SPIDER_KEYS}


def _row(m: dict, keys: list[str]) -> str:
    return " | ".join(str(m.get(k, "–")) for k in keys)


def _ci(intervals: dict, key: str) -> str:
    lo, hi = intervals.get(key, (None, None))
    return f"[{lo}–{hi}]" if lo is not None else ""


def tables(report: dict) -> str:
    out = ["| fold | studies | " + " | ".join(KEYS) + " |", "|" + " --- |" * (len(KEYS) + 2)]
    for i, m in enumerate(report["per_fold"], 1):
        out.append(f"| {i} | {m['studies']} | " + _row(m, KEYS) + " |")
    out.append("| **mean** | | " + " | ".join(f"**{report['cv_mean'].get(k, '–')}**" for k in KEYS) + " |")
    out += [
        "",
        "Per-class F1 (each fold scored with biases tuned on the other folds' predictions):",
        "",
        "| fold | " + " | ".join(CLASSES) + " |",
        "|" + " --- |" * (len(CLASSES) + 1),
    ]
    for i, m in enumerate(report["per_fold"], 1):
        out.append(f"| {i} | " + " | ".join(f"{m['per_class'][c]['f1']:.3f}" for c in CLASSES) + " |")
    pooled = report.get("cv_untuned_pooled")
    if pooled:
        out += [
            "",
            f"Pooled out-of-fold, untuned decision (arg-max): macro-F1 {pooled['tianchi_macro_f1']}, "
            f"within 6 mm {pooled['within_6mm']}, all 11 levels hit {pooled['all_levels_hit']}.",
        ]
    nested, ci = report.get("cv_pooled_nested"), report.get("ci95", {})
    if nested and "tianchi" in ci:
        figures = ", ".join(f"{k} {nested[k]} {_ci(ci['tianchi'], k)}" for k in ci["tianchi"])
        out += ["", f"Pooled held out, each study read with its own fold's decision (95 % bootstrap): {figures}."]
    if "spider_pooled_nested" in report:
        out += ["", spider_tables(report)]
    return "\n".join(out)


def spider_tables(report: dict) -> str:
    """SPIDER's held-out figures per fold (the same folds' decision as above), pooled, and per manufacturer."""
    keys = list(SPIDER_KEYS)
    out = [
        "SPIDER held out (fold k of SPIDER held out with fold k of Tianchi; prefix `spider_` left out):",
        "",
        "| fold | discs | " + " | ".join(SHORT[k] for k in keys) + " |",
        "|" + " --- |" * (len(keys) + 2),
    ]
    for i, m in enumerate(report["per_fold"], 1):
        out.append(f"| {i} | {m.get('spider_discs', '–')} | " + _row(m, keys) + " |")
    out.append("| **mean** | | " + " | ".join(f"**{report['cv_mean'].get(k, '–')}**" for k in keys) + " |")
    pooled = report["spider_pooled_nested"]
    out.append(f"| pooled | {pooled['discs']} | " + _row(pooled, keys) + " |")
    if "spider" in report.get("ci95", {}):
        out.append("| 95 % CI | | " + " | ".join(_ci(report["ci95"]["spider"], k) for k in keys) + " |")
    out += [
        "",
        "Per scanner manufacturer (pooled, each slice read with its own fold's decision):",
        "",
        "| manufacturer | slices | discs | " + " | ".join(SHORT[k] for k in keys) + " |",
        "|" + " --- |" * (len(keys) + 3),
    ]
    for name, m in report.get("spider_per_manufacturer_nested", {}).items():
        out.append(f"| {name} | {m['studies']} | {m['discs']} | " + _row(m, keys) + " |")
        if f"spider_{name}" in report.get("ci95", {}):
            out.append("| 95 % CI | | | " + " | ".join(_ci(report["ci95"][f"spider_{name}"], k) for k in keys) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(Path(sys.argv[1]).read_text())))
