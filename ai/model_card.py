"""Renders the cross-validation tables of a training report (cv.json) as Markdown for the model card.

    python -m ai.model_card ai/weights/default/cv.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ai.evaluate import METRIC_KEYS as KEYS
from ai.labels import SCORED_CLASSES

CLASSES = [f"{kind}_{label}" for kind, label in SCORED_CLASSES]  # the keys of a report's per_class


def tables(report: dict) -> str:
    out = ["| fold | studies | " + " | ".join(KEYS) + " |", "|" + " --- |" * (len(KEYS) + 2)]
    for i, m in enumerate(report["per_fold"], 1):
        out.append(f"| {i} | {m['studies']} | " + " | ".join(str(m[k]) for k in KEYS) + " |")
    out.append("| **mean** | | " + " | ".join(f"**{report['cv_mean'][k]}**" for k in KEYS) + " |")
    out += ["", "Per-class F1 (each fold scored with biases tuned on the other folds' predictions):", "",
            "| fold | " + " | ".join(CLASSES) + " |", "|" + " --- |" * (len(CLASSES) + 1)]
    for i, m in enumerate(report["per_fold"], 1):
        out.append(f"| {i} | " + " | ".join(f"{m['per_class'][c]['f1']:.3f}" for c in CLASSES) + " |")
    pooled = report["cv_untuned_pooled"]
    out += ["", f"Pooled out-of-fold, untuned decision (arg-max): macro-F1 {pooled['tianchi_macro_f1']}, "
            f"within 6 mm {pooled['within_6mm']}, all 11 levels hit {pooled['all_levels_hit']}."]
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(Path(sys.argv[1]).read_text())))
