"""Held-out AUC of the graders' SPIDER findings (the model card's "Other SPIDER findings" table), against a
level-only baseline: what the level one-hot alone could learn (each disc scored by the finding's rate at its level
in the other folds). Reads the graders' out-of-fold SPIDER probabilities (`oof_spider.json`, written by
`dicomnode train --spider`), averaged as the ensemble averages them. Prints JSON.

    .venv/bin/python scripts/findings_auc.py --spider ../shared/data/spider-t2 cv/c96 cv/c96s10 cv/j10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.labels import LEVEL_INDEX  # noqa: E402
from ai.models import FINDINGS, HERNIATION, SPIDER_FINDINGS  # noqa: E402
from ai.spider import load_spider  # noqa: E402
from ai.training.train import folds_of  # noqa: E402

BULGING = HERNIATION + 1


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mann-Whitney: the chance that a positive disc scores above a negative one (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = truth.sum()
    neg = len(truth) - pos
    return float((ranks[truth == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graders", nargs="+", type=Path)
    ap.add_argument("--spider", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    studies = load_spider(args.spider)
    each = []
    for g in args.graders:
        stored = {p["instance_uid"]: np.asarray(p["probs"]) for p in json.loads((g / "oof_spider.json").read_text())}
        each.append([stored[s.instance_uid] for s in studies])
    probs = [np.mean([e[i] for e in each], axis=0) for i in range(len(studies))]
    fold_of = np.zeros(len(studies), int)
    for k, idx in enumerate(folds_of(len(studies), args.folds)):
        fold_of[idx] = k
    columns = {"herniation": ("disc_herniation", HERNIATION), "bulging": ("disc_bulging", BULGING)}
    columns.update({name: (name, FINDINGS.start + j) for j, name in enumerate(SPIDER_FINDINGS)})
    rng = np.random.default_rng(0)
    out = {}
    for name, (field, col) in columns.items():
        rows = [
            (i, LEVEL_INDEX[d.level], int(d.grades[field] > 0), float(probs[i][LEVEL_INDEX[d.level], col]))
            for i, s in enumerate(studies)
            for d in s.discs.values()
            if field in d.grades and d.level in LEVEL_INDEX
        ]
        study, level, truth, score = (np.asarray(c) for c in zip(*rows, strict=True))
        base = np.zeros(len(rows))
        for k in range(args.folds):  # the finding's rate at each level in the other folds
            held = fold_of[study] == k
            for lv in np.unique(level):
                train = ~held & (level == lv)
                base[held & (level == lv)] = truth[train].mean() if train.any() else truth[~held].mean()
        boots = []
        for _ in range(args.boot):  # resampling patients, whose discs are not independent
            pick = rng.choice(len(studies), len(studies))
            sel = np.concatenate([np.flatnonzero(study == p) for p in pick])
            if 0 < truth[sel].sum() < len(sel):
                boots.append(auc(score[sel], truth[sel]))
        out[name] = {
            "discs": len(rows),
            "positives": int(truth.sum()),
            "auc": round(auc(score, truth), 3),
            "auc_95": [round(float(np.percentile(boots, 2.5)), 3), round(float(np.percentile(boots, 97.5)), 3)],
            "level_only_auc": round(auc(base, truth), 3),
        }
    print(json.dumps({"graders": [str(g) for g in args.graders], "findings": out}, indent=2))


if __name__ == "__main__":
    main()
