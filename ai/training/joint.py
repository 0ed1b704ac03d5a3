"""The grader learns from both data sets: Tianchi's annotated points and SPIDER's graded discs.

SPIDER has no coordinates, so its discs are found by a landmark model that never saw SPIDER (the shipped
ensemble), and a slice whose chain is doubtful is left out (`usable_discs`). Its grades train their own heads on
the grader's shared backbone (`ai.models.N_GRADES_BOTH`); the disc call mixes both readings (`ai.decide.DiscRule`),
its thresholds tuned on out-of-fold predictions of both sets at once (`tune_joint`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ai.decide import Decision, DiscRule
from ai.evaluate import METRIC_KEYS, evaluate, results_for
from ai.imaging import normalise
from ai.labels import LEVEL_INDEX, LEVELS
from ai.models import BULGING, FINDINGS, HERNIATION, PFIRRMANN, SPIDER_FINDINGS
from ai.spider import METRIC_KEYS as SPIDER_METRIC_KEYS
from ai.spider import SpiderStudy, bootstrap_ci, by_manufacturer, spider_metrics

DISC_ROWS = [i for i, level in enumerate(LEVELS) if "-" in level]
# A located chain is trusted where at least this share of the landmark nets agree (3 of 5) at a disc, and the two
# lowest discs, from which the levels are counted, have at least LOW_AGREE (4 of 5).
DISC_AGREE = 0.6
LOW_AGREE = 0.8
MAX_STEP_RATIO = 1.8  # largest / median step between neighbouring points: above it a level was skipped
MIN_STEP_RATIO = 0.5  # smallest / median: two points on one structure


@dataclass
class SpiderItem:
    study: SpiderStudy
    img01: np.ndarray
    xy: np.ndarray  # (11, 2) located points
    agreement: np.ndarray  # (11,)
    use: np.ndarray  # (11,) bool: a graded disc on a trusted part of the chain


def usable_discs(xy: np.ndarray, agreement: np.ndarray) -> np.ndarray:
    """(11,) mask of disc levels whose located point can be trusted to carry SPIDER's grade of that level."""
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    med = float(np.median(steps)) or 1.0
    use = np.zeros(len(LEVELS), bool)
    if steps.max() / med > MAX_STEP_RATIO or steps.min() / med < MIN_STEP_RATIO:
        return use
    if min(agreement[LEVEL_INDEX["L5-S1"]], agreement[LEVEL_INDEX["L4-L5"]]) < LOW_AGREE:
        return use
    for i in DISC_ROWS:
        use[i] = agreement[i] >= DISC_AGREE
    return use


def prepare_spider(studies: Sequence[SpiderStudy], locator: Any) -> list[SpiderItem]:
    """Locates every slice (locator: an `ai.infer.Analyzer`, normally the shipped ensemble)."""
    items = []
    for st in studies:
        pixels, _ = st.load()
        found = locator.locate_slices([pixels])[0]
        use = usable_discs(found.xy, found.agreement)
        use &= np.array([level in st.discs for level in LEVELS])
        items.append(SpiderItem(st, normalise(pixels), found.xy, found.agreement, use))
    return items


def spider_targets(items: Sequence[SpiderItem]) -> dict[str, torch.Tensor]:
    """Per (item, level), -1 where not used: herniation, bulging (0/1), Pfirrmann (0..4), each finding (0/1)."""
    names = ("disc_herniation", "disc_bulging", "pfirrmann", *SPIDER_FINDINGS)
    out = {name: torch.full((len(items), len(LEVELS)), -1, dtype=torch.long) for name in names}
    for n, it in enumerate(items):
        for i, level in enumerate(LEVELS):
            disc = it.study.discs.get(level)
            if disc is None or not it.use[i]:
                continue
            for name in names:
                if name in disc.grades:
                    value = disc.grades[name]
                    out[name][n, i] = value - 1 if name == "pfirrmann" else int(value > 0)
    return out


def pos_weight(target: torch.Tensor) -> torch.Tensor:
    """sqrt(negatives / positives) of a 0/1 target (-1 ignored): rare findings count without swamping."""
    known = target[target >= 0]
    pos = (known == 1).float().mean().clamp(1e-3, 1 - 1e-3)
    return ((1 - pos) / pos) ** 0.5


def spider_loss(logits: torch.Tensor, t: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """logits (M, N_GRADES_BOTH) of M SPIDER disc crops; t: their targets (M,) per name."""
    loss = logits.new_zeros(())
    for name, col in (("disc_herniation", HERNIATION), ("disc_bulging", BULGING)):
        m = t[name] >= 0
        if m.any():
            loss = loss + F.binary_cross_entropy_with_logits(
                logits[m, col], t[name][m].float(), pos_weight=weights[name]
            )
    m = t["pfirrmann"] >= 0
    if m.any():
        loss = loss + F.cross_entropy(logits[m][:, PFIRRMANN], t["pfirrmann"][m], label_smoothing=0.05)
    extra = logits.new_zeros(())
    for j, name in enumerate(SPIDER_FINDINGS):
        m = t[name] >= 0
        if m.any():
            extra = extra + F.binary_cross_entropy_with_logits(
                logits[m, FINDINGS.start + j], t[name][m].float(), pos_weight=weights[name]
            )
    return loss + 0.5 * extra / len(SPIDER_FINDINGS)


def hospital_augment(crops: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """What another scanner changes: contrast (gamma, gain), resolution (down- and up-sampled) and noise."""
    n, _, s, _ = crops.shape
    out = crops.clamp(0, 1)
    gamma = torch.tensor(rng.uniform(0.7, 1.45, n), dtype=torch.float32).view(n, 1, 1, 1)
    gain = torch.tensor(rng.uniform(0.8, 1.2, n), dtype=torch.float32).view(n, 1, 1, 1)
    out = out**gamma * gain
    low = rng.random(n) < 0.4
    if low.any():
        side = int(s * rng.uniform(0.45, 0.8))
        idx = torch.from_numpy(np.flatnonzero(low))
        small = F.interpolate(out[idx], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        out[idx] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    sigma = torch.tensor(rng.uniform(0, 0.05, n) * (rng.random(n) < 0.5), dtype=torch.float32).view(n, 1, 1, 1)
    noise = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    return (out + sigma * noise).clamp(0, 1)


# --- predictions of both sets and the decision tuned on them ------------------------------------------------------


def spider_levels(probs: np.ndarray, decision: Decision) -> list[dict[str, Any]]:
    """The node's levels for one SPIDER slice from the grader's (11, K) probabilities, as the SPIDER metric reads
    them."""
    out = []
    for i, level in enumerate(LEVELS):
        labels, _ = decision.labels(level, probs[i])
        grade = decision.pfirrmann(level, probs[i])
        out.append(
            {
                "level": level,
                "kind": "disc" if "-" in level else "vertebra",
                "labels": labels,
                "pfirrmann": grade[0] if grade else None,
            }
        )
    return out


def score_both(
    tianchi: tuple[Sequence[Any], Sequence[dict]],
    spider: tuple[Sequence[SpiderStudy], Sequence[dict]],
    decision: Decision,
    fast: bool = False,
) -> dict[str, Any]:
    """Both sets' figures under one decision (fast: without the single-label figure, for tuning loops)."""
    t = evaluate(results_for(*tianchi, decision), single_label_figure=not fast) if tianchi[0] else {}
    studies, preds = spider
    s = (
        spider_metrics(
            list(studies),
            {
                st.instance_uid: spider_levels(np.asarray(p["probs"]), decision)
                for st, p in zip(studies, preds, strict=True)
            },
        )
        if studies
        else {}
    )
    # both sets count their own studies: SPIDER's counts get its prefix, Tianchi's keep the plain names
    return {**t, **{(f"spider_{k}" if k in ("studies", "discs", "unnamed") else k): v for k, v in s.items()}}


SPECIFICITY_FLOOR = 0.80  # the herniation call's specificity on SPIDER, with a margin over the 0.75 a reader needs


def objective(m: dict[str, Any], floor: float = SPECIFICITY_FLOOR) -> float:
    """Tianchi macro-F1 plus SPIDER's mean balanced accuracy (herniation, abnormal); a herniation call below the
    specificity floor loses by how far it is below."""
    score = m.get("tianchi_macro_f1", 0.0)
    if "spider_herniation_balanced_accuracy" in m:
        score += (m["spider_herniation_balanced_accuracy"] + m["spider_abnormal_balanced_accuracy"]) / 2
        score -= 5 * max(0.0, floor - m["spider_herniation_specificity"])
    return float(score)


RULE_GRID = {
    "herniation_mix": [0.0, 0.25, 0.5, 0.75, 1.0],
    "herniation_threshold": [round(v, 2) for v in np.arange(0.1, 0.91, 0.05)],
    "extrusion_share": [0.3, 0.4, 0.5, 0.6, 0.7],
    "bulge_mix": [0.0, 0.25, 0.5, 0.75, 1.0],
    "bulge_threshold": [round(v, 2) for v in np.arange(0.2, 0.81, 0.05)],
}
V5_MIXES = (0.0, 0.25, 0.5, 0.75)
V5_THRESHOLDS = tuple(round(float(v), 2) for v in np.arange(0.1, 0.91, 0.05))


def tune_joint(
    tianchi: tuple[Sequence[Any], Sequence[dict]],
    spider: tuple[Sequence[SpiderStudy], Sequence[dict]],
    rounds: int = 3,
    floor: float = SPECIFICITY_FLOOR,
    log: Callable[[str], None] | None = None,
) -> Decision:
    """Coordinate ascent over the disc rule, the vertebra bias and the Schmorl's-node mix and threshold."""
    d = Decision(disc_rule=DiscRule())
    best = objective(score_both(tianchi, spider, d, fast=True), floor)
    for _ in range(rounds):
        improved = False
        for name, values in RULE_GRID.items():
            for v in values:
                assert d.disc_rule is not None
                cand = replace(d, disc_rule=replace(d.disc_rule, **{name: float(v)}))
                score = objective(score_both(tianchi, spider, cand, fast=True), floor)
                if score > best + 1e-9:
                    best, d, improved = score, cand, True
        for v in np.round(np.arange(-1.5, 1.51, 0.25), 2):
            cand = replace(d, vertebra_bias=[0.0, float(v)])
            score = objective(score_both(tianchi, spider, cand, fast=True), floor)
            if score > best + 1e-9:
                best, d, improved = score, cand, True
        # the Schmorl's-node score's mix and threshold together: a new mix needs its own threshold
        for mix, t in itertools.product(V5_MIXES, V5_THRESHOLDS):
            cand = replace(d, v5_endplate_mix=mix, v5_threshold=t)
            score = objective(score_both(tianchi, spider, cand, fast=True), floor)
            if score > best + 1e-9:
                best, d, improved = score, cand, True
        if not improved:
            break
    if log:
        log(f"joint decision {d.to_dict()} objective {best:.4f}")
    return d


JOINT_KEYS = [*METRIC_KEYS, *SPIDER_METRIC_KEYS]
CI_KEYS = ["tianchi_macro_f1", "within_6mm", "all_levels_hit"]  # Tianchi's figures given with a bootstrap interval


def summarise_joint(
    items: Sequence[Any],
    oof: Sequence[dict],
    splits: Sequence[np.ndarray],
    spider: Sequence[SpiderItem],
    spider_oof: Sequence[dict],
    spider_splits: Sequence[np.ndarray],
) -> dict[str, Any]:
    """CV figures of both sets: fold k of each held out together, scored with a decision tuned on the other folds
    of both; then both sets pooled (each study read with its own fold's decision), SPIDER's per manufacturer, with
    95 % patient-bootstrap intervals (`ci95`): what the figures could have been on this many patients."""
    studies = [it.study for it in spider]
    per_fold, own, pooled = [], {}, []
    for val, sval in zip(splits, spider_splits, strict=True):
        held, sheld = set(val), set(sval)
        others = [i for i in range(len(items)) if i not in held]
        sothers = [i for i in range(len(spider)) if i not in sheld]
        d = tune_joint(
            ([items[i] for i in others], [oof[i] for i in others]),
            ([studies[i] for i in sothers], [spider_oof[i] for i in sothers]),
        )
        m = score_both(
            ([items[i] for i in val], [oof[i] for i in val]),
            ([studies[i] for i in sval], [spider_oof[i] for i in sval]),
            d,
        )
        m["decision"] = d.to_dict()
        per_fold.append(m)
        pooled += results_for([items[i] for i in val], [oof[i] for i in val], d)
        own.update({studies[i].instance_uid: spider_levels(np.asarray(spider_oof[i]["probs"]), d) for i in sval})
    report: dict[str, Any] = {
        "per_fold": per_fold,
        "cv_mean": {k: round(float(np.mean([m[k] for m in per_fold])), 4) for k in JOINT_KEYS},
    }
    report["cv_pooled_nested"] = evaluate(pooled, single_label_figure=False)
    report["spider_pooled_nested"] = spider_metrics(studies, own)
    report["spider_per_manufacturer_nested"] = by_manufacturer(studies, own)
    report["ci95"] = {
        "tianchi": bootstrap_ci(pooled, {}, lambda sample, _: evaluate(sample, False), CI_KEYS),
        "spider": bootstrap_ci(studies, own, spider_metrics, SPIDER_METRIC_KEYS),
        **{
            f"spider_{name}": bootstrap_ci(group, own, spider_metrics, SPIDER_METRIC_KEYS)
            for name, group in by_manufacturer(studies, own, lambda group, _: group).items()
        },
    }
    final = tune_joint((items, oof), (studies, spider_oof))
    report["decision"] = final.to_dict()
    report["cv_pooled_tuned_in_sample"] = score_both((items, oof), (studies, spider_oof), final)
    report["spider_slices"] = {
        "located": len(spider),
        "used": int(sum(it.use.any() for it in spider)),
        "discs_used": int(sum(it.use.sum() for it in spider)),
    }
    return report
