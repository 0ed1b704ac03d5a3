"""Fine-tunes a model's graders on a site's reviewed discs (`dicomnode train --site DIR --fine-tune`) by one recipe,
fixed here and in the model card: each grader from the base model's weights, `RECIPE`'s epochs at its low learning
rate, the reviewer's call on Tianchi's disc head, Schmorl's node on its v5 head and the Pfirrmann grade on SPIDER's
Pfirrmann head. Crops are cut where the node locates the disc, as it grades, and a disc whose reviewer moved its
point further than `NEAR_STEPS` from there teaches nothing (the crop shows another disc). A hospital's node holds
none of the public training sets to rehearse, hence the few epochs at a low rate; the nested before / after on the
site's own discs (`ai.training.site.retune`) says whether it helped."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ai.infer import Member, combine_grades, grade_probs, level_crops, store_int8
from ai.labels import CALLS, LEVELS
from ai.models import CROP_SIZE, DISC, N_GRADES_BOTH, PFIRRMANN, V5
from ai.orient import Canonical
from ai.results import Located
from ai.site import SiteStudy
from ai.training.joint import hospital_augment
from ai.training.quantize import calibrate_folder

RECIPE = {"epochs": 5, "max_lr": 1e-4, "slices_per_step": 8, "seed": 0}
NEAR_STEPS = 0.25  # a reviewer's point further than this (local disc steps) from the node's: another disc
JITTER = {"deg": 10.0, "scale": 0.12, "shift": 0.12}


@dataclass
class SiteSlice:
    """One reviewed slice as the graders learn it: per level -1 where there is nothing to learn."""

    patient: str
    img01: np.ndarray
    xy: np.ndarray  # (11, 2) the node's points on the turned slice
    call: np.ndarray  # (11,) index in CALLS (normal, bulge, protrusion, extrusion: Tianchi's disc head)
    schmorl: np.ndarray  # (11,) 0/1
    pfirrmann: np.ndarray  # (11,) grade - 1

    @property
    def mask(self) -> np.ndarray:  # every level's point is there (`ai.training.quantize.calibrate_folder` reads it)
        return np.ones(len(LEVELS), bool)


def site_slice(st: SiteStudy, found: Located, turn: Canonical, shape: tuple[int, int]) -> SiteSlice:
    """The reviewer's labels of a site slice at the discs the node found (`found`, with its pixels) where the
    reviewer saw them (the review's points are on the stored grid of `shape`)."""
    call, schmorl, pfirrmann = (np.full(len(LEVELS), -1) for _ in range(3))
    for level, d in st.discs.items():
        if level not in LEVELS:
            continue
        i = LEVELS.index(level)
        if d.x is not None and d.y is not None and d.step_px:
            seen = turn.to_canonical(np.array([[d.x, d.y]]), shape)[0]
            if np.hypot(*(seen - found.xy[i])) > NEAR_STEPS * d.step_px:
                continue
        call[i] = CALLS.index(d.call)
        schmorl[i] = int(d.schmorl)
        pfirrmann[i] = d.pfirrmann - 1 if d.pfirrmann else -1
    return SiteSlice(st.patient, found.img01, np.asarray(found.xy, np.float64), call, schmorl, pfirrmann)


def _loss(logits: torch.Tensor, call: torch.Tensor, schmorl: torch.Tensor, pfirrmann: torch.Tensor) -> torch.Tensor:
    loss = logits.new_zeros(())
    if (call >= 0).any():
        loss = loss + F.cross_entropy(logits[call >= 0][:, DISC], call[call >= 0], label_smoothing=0.05)
    if (schmorl >= 0).any():
        loss = loss + F.binary_cross_entropy_with_logits(logits[schmorl >= 0, V5], schmorl[schmorl >= 0].float())
    if logits.shape[1] >= N_GRADES_BOTH and (pfirrmann >= 0).any():
        loss = loss + F.cross_entropy(
            logits[pfirrmann >= 0][:, PFIRRMANN], pfirrmann[pfirrmann >= 0], label_smoothing=0.05
        )
    return loss


def fine_tune(members: list[Member], slices: list[SiteSlice], log: Callable[[str], None]) -> list[nn.Module]:
    """A fine-tuned copy of each member's grader (fp32); the members are left as they are."""
    epochs, lr, per_step = int(RECIPE["epochs"]), float(RECIPE["max_lr"]), int(RECIPE["slices_per_step"])
    out = []
    for k, member in enumerate(members):
        if member.grader is None:
            raise ValueError("a grading member without a grader")
        net = copy.deepcopy(member.grader).train()
        size = int(member.meta.get("crop_size", CROP_SIZE))
        seed = int(RECIPE["seed"]) + k
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        steps = max(1, epochs * math.ceil(len(slices) / per_step))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        # cosine from the low rate down, no warm-up: a site's few steps are too few for a one-cycle schedule
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for epoch in range(epochs):
            order = rng.permutation(len(slices))
            total = 0.0
            for b in range(0, len(order), per_step):
                crops, levels, targets = [], [], []
                for s in (slices[i] for i in order[b : b + per_step]):
                    rows = np.flatnonzero((s.call >= 0) | (s.pfirrmann >= 0))
                    if not len(rows):
                        continue
                    c = level_crops(torch.from_numpy(s.img01)[None], s.xy, dict(JITTER, rng=rng), size)[rows]
                    crops.append(hospital_augment(c, rng))
                    levels.append(torch.from_numpy(rows))
                    targets.append(torch.from_numpy(np.stack([s.call, s.schmorl, s.pfirrmann], 1)[rows]))
                if not crops:
                    continue
                t = torch.cat(targets).long()
                loss = _loss(net(torch.cat(crops), torch.cat(levels)), t[:, 0], t[:, 1], t[:, 2])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.item())
            log(f"site fine-tune: grader {k + 1}/{len(members)} epoch {epoch + 1}/{epochs} loss {total:.3f}")
        out.append(net.eval())
    return out


@torch.no_grad()
def grade(nets: list[nn.Module], sizes: list[int], s: SiteSlice, tianchi: list[bool] | None) -> np.ndarray:
    """(11, K) probabilities of fine-tuned (fp32) graders, combined as the node combines its graders'."""
    img = torch.from_numpy(s.img01)[None]
    each = [
        grade_probs(net(level_crops(img, s.xy, size=size), torch.arange(len(LEVELS)))).numpy()
        for net, size in zip(nets, sizes, strict=True)
    ]
    return combine_grades(each, tianchi)


def cross_fitted(
    base: Path, tianchi: list[bool] | None, slices: list[SiteSlice], fold_of: dict[str, int], log: Callable[[str], None]
) -> tuple[list[np.ndarray], Callable[[Path], None], dict[str, Any]]:
    """Each slice's (11, K) probabilities from graders fine-tuned without its fold's patients (the "after" figures
    and the thresholds' re-tune read these); what stores the graders fine-tuned on every slice into a model folder;
    and what the fine-tune was, for model.json. tianchi: which graders' Tianchi heads are read (`Analyzer.tianchi`)."""
    meta = json.loads((base / "model.json").read_text())
    if "ensemble" not in meta:
        raise ValueError(f"{base}: --fine-tune needs an ensemble model (graders in member folders)")
    names = list(meta["ensemble"]["grade"])
    members = [Member.load(base / name, "cpu", fused=False) for name in names]
    sizes = [int(m.meta.get("crop_size", CROP_SIZE)) for m in members]
    probs: list[np.ndarray] = [np.zeros(0)] * len(slices)
    for f in sorted(set(fold_of.values())):
        log(f"site fine-tune: outer fold {f + 1} of {len(set(fold_of.values()))}")
        nets = fine_tune(members, [s for s in slices if fold_of[s.patient] != f], log)
        for i, s in enumerate(slices):
            if fold_of[s.patient] == f:
                probs[i] = grade(nets, sizes, s, tianchi)
    final = fine_tune(members, slices, log)
    learnt = int(sum(((s.call >= 0) | (s.pfirrmann >= 0)).sum() for s in slices))
    report = {"recipe": dict(RECIPE), "slices": len(slices), "discs_learnt": learnt}

    def store(folder: Path) -> None:
        for name, member, net in zip(names, members, final, strict=True):
            Member(None, net, member.meta, torch.device("cpu")).save(folder / name, {"site_fine_tuned": report})
            store_int8(folder / name / "grader.safetensors")
        calibrate_folder(folder, slices)  # the int8 ranges of the new graders, measured on the site's slices

    return probs, store, report
