"""Training with k-fold cross-validation on the annotated slices, then a final fit on all of them.

Decision biases are tuned on out-of-fold predictions of the *other* folds before a fold is scored, so the CV
figures never see their own tuning."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ai.data import Item, load_dataset, prepare
from ai.decide import Decision
from ai.evaluate import HIT_MM, METRIC_KEYS, evaluate, results_for
from ai.imaging import INPUT_SIZE
from ai.infer import Analyzer, Member, level_crops
from ai.labels import DISC_MAIN_LABELS, LEVELS, level_kind
from ai.models import CROP_SIZE, DISC, HEATMAP_STRIDE, N_GRADES, N_GRADES_BOTH, V5, VERT, Grader, LandmarkNet
from ai.spider import load_spider
from ai.training import joint
from ai.training.calibrate import calibration_error, fit_temperatures
from ai.training.joint import SpiderItem, spider_targets
from ai.training.quantize import calibrate_folder

Log = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a model apart from the data and the seed; recorded in cv.json and model.json."""

    lm_epochs: int = 45
    gr_epochs: int = 15
    zoom: tuple[float, float] = (0.85, 1.2)
    detector: str = "heatmap"  # or "yolo", the seed report's
    grader_arch: str = "resnet18"
    width: int = 16  # landmark net channels at stride 2
    input_size: int = INPUT_SIZE  # landmark net input side
    crop_size: int = CROP_SIZE  # grader crop side
    shift: float = 0.1  # landmark augmentation: largest shift in normalised coordinates (the input spans -1..1)
    # (share, lo, hi): that share of the landmark batches zoomed lo..hi instead, as a tight field of view shows
    zoom_tail: tuple[float, float, float] | None = None


def _augment(
    x: torch.Tensor,
    pts: torch.Tensor,
    rng: np.random.Generator,
    zoom: tuple[float, float] = (0.85, 1.2),
    shift: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation/scale/shift (anatomy-preserving: no flips) and intensity gamma/contrast.
    pts in input pixels (N, 11, 2)."""
    n, _, s, _ = x.shape
    ang = np.deg2rad(rng.uniform(-12, 12, n))
    scale = rng.uniform(*zoom, n)  # >1 zooms in
    offset = rng.uniform(-shift, shift, (n, 2))
    cos, sin = np.cos(ang) / scale, np.sin(ang) / scale
    dev = x.device
    a = torch.tensor(np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1), dtype=torch.float32, device=dev)
    t = torch.tensor(offset, dtype=torch.float32, device=dev)
    theta = torch.cat([a, t[:, :, None]], 2)
    grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.tensor(rng.uniform(0.7, 1.4, n), dtype=torch.float32, device=dev).view(n, 1, 1, 1)
    gain = torch.tensor(rng.uniform(0.8, 1.2, n), dtype=torch.float32, device=dev).view(n, 1, 1, 1)
    x = (x.clamp(0, 1) ** gamma * gain).clamp(0, 1)
    norm = (pts + 0.5) / s * 2 - 1  # input normalised coords
    out = torch.linalg.solve(a, (norm - t[:, None, :]).transpose(1, 2)).transpose(1, 2)
    return x, (out + 1) / 2 * s - 0.5


def _heatmap_loss(logits: torch.Tensor, pts: torch.Tensor, mask: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the spatial softmax against a normalised Gaussian at each landmark."""
    n, k, h, w = logits.shape
    c = (pts - (HEATMAP_STRIDE - 1) / 2) / HEATMAP_STRIDE
    ys = torch.arange(h, dtype=torch.float32, device=logits.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=logits.device).view(1, 1, 1, w)
    g = torch.exp(-((xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2) / (2 * sigma**2))
    g = g / g.flatten(2).sum(-1).clamp_min(1e-9)[..., None, None]
    inside = (c[..., 0] >= 0) & (c[..., 0] < w) & (c[..., 1] >= 0) & (c[..., 1] < h)
    m = mask & inside
    ce = -(g.flatten(2) * logits.flatten(2).log_softmax(-1)).sum(-1)
    return (ce * m).sum() / m.sum().clamp_min(1)


def train_landmarks(
    items: list[Item],
    epochs: int,
    seed: int,
    log: Log,
    recipe: Recipe = Recipe(),
    device: str = "cpu",
    init: LandmarkNet | None = None,
    max_lr: float = 2e-3,
) -> LandmarkNet:
    """init: a trained net to go on from (fine-tuning, at a lower max_lr) instead of a new one."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = (init if init is not None else LandmarkNet(recipe.width)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=max_lr, weight_decay=1e-4)
    bs = 8
    steps = epochs * math.ceil(len(items) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.15)
    x_all = torch.stack([it.net_in for it in items]).to(device)
    p_all = torch.tensor(np.stack([it.box.to_input(it.xy) for it in items]), dtype=torch.float32, device=device)
    m_all = torch.tensor(np.stack([it.mask for it in items]), device=device)
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(items))
        total = 0.0
        t0 = time.time()
        for b in range(0, len(order), bs):
            idx = torch.from_numpy(order[b : b + bs]).to(device)
            zoom = recipe.zoom
            if recipe.zoom_tail and rng.random() < recipe.zoom_tail[0]:
                zoom = (recipe.zoom_tail[1], recipe.zoom_tail[2])
            x, pts = _augment(x_all[idx], p_all[idx], rng, zoom, recipe.shift)
            loss = _heatmap_loss(net(x), pts, m_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"landmarks epoch {epoch + 1}/{epochs} loss {total / len(items):.3f} ({time.time() - t0:.1f}s)")
    return net.eval()


def _grade_targets(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (item, level): vertebra class (-1 none), disc main class (-1 none), v5 (0/1, -1 none)."""
    vert, disc, v5 = [], [], []
    for it in items:
        for level in LEVELS:
            p = it.study.points.get(level)
            labels = p.labels if p else []
            if level_kind(level) == "vertebra":
                vert.append({"v1": 0, "v2": 1}.get(labels[0], -1) if labels else -1)
                disc.append(-1)
                v5.append(-1)
            else:
                vert.append(-1)
                main = [lab for lab in labels if lab in DISC_MAIN_LABELS]
                disc.append(DISC_MAIN_LABELS.index(main[0]) if main else -1)
                v5.append(int("v5" in labels) if labels else -1)
    t = lambda v: torch.tensor(v).view(len(items), len(LEVELS))  # noqa: E731
    present = torch.tensor(np.stack([it.mask for it in items]))
    return t(vert), t(disc), t(v5), present


def train_grader(
    items: list[Item],
    epochs: int,
    seed: int,
    log: Log,
    arch: str = "resnet18",
    crop_size: int = CROP_SIZE,
    device: str = "cpu",
    spider: Sequence[SpiderItem] | None = None,
    init: Grader | None = None,
    max_lr: float = 1e-3,
) -> Grader:
    """With spider, one backbone learns both sets: each step grades 6 Tianchi studies (all 11 levels) and the
    usable discs of about as many SPIDER slices, each set on its own heads, with crops augmented as another
    hospital's scanner would change them. init: a trained grader to go on from (fine-tuning, at a lower max_lr)."""
    spider = spider or []
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = init.to(device) if init is not None else Grader(arch, N_GRADES_BOTH if spider else N_GRADES).to(device)
    vert, disc, v5, present = _grade_targets(items)
    counts = torch.bincount(disc[disc >= 0], minlength=4).float()
    disc_w = (counts.sum() / counts.clamp_min(1)) ** 0.5
    disc_w = (disc_w / disc_w.mean()).to(device)
    v5_pos = ((v5 == 1).sum() / (v5 >= 0).sum().clamp_min(1)).clamp_min(1e-3)
    pos_weight = (((1 - v5_pos) / v5_pos) ** 0.5).to(device)
    sp_t = spider_targets(spider) if spider else {}
    sp_w = {name: joint.pos_weight(t).to(device) for name, t in sp_t.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=max_lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(items) / 6)
    sp_per_step = math.ceil(len(spider) / per_epoch) if spider else 0
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * per_epoch, pct_start=0.2)
    jitter: dict[str, Any] = {"rng": rng, "deg": 10.0, "scale": 0.12, "shift": 0.12}
    if spider:
        jitter["aspect"] = 1.3  # SPIDER's grids stretch some slices head to feet
    levels = torch.arange(len(LEVELS))
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(items))
        sp_order = rng.permutation(len(spider)) if spider else np.zeros(0, int)
        total = 0.0
        t0 = time.time()
        for step, b in enumerate(range(0, len(order), 6)):  # 6 studies = 66 crops a step
            idx = order[b : b + 6]
            crops: list[torch.Tensor] = []
            lv: list[torch.Tensor] = []
            tv_parts: list[torch.Tensor] = []
            td_parts: list[torch.Tensor] = []
            t5_parts: list[torch.Tensor] = []
            for i in idx:
                it = items[i]
                xy = it.xy.copy()
                if not it.mask.all():  # fill a missing point between its neighbours so geometry stays sane
                    xy = _fill_missing(xy, it.mask)
                c = level_crops(torch.from_numpy(it.img01)[None], xy, jitter, crop_size)
                if spider:
                    crops.append(joint.hospital_augment(c, rng))
                else:
                    g = torch.tensor(rng.uniform(0.75, 1.35), dtype=torch.float32)
                    crops.append((c.clamp(0, 1) ** g) * float(rng.uniform(0.85, 1.15)))
                lv.append(levels)
                tv_parts.append(vert[i])
                td_parts.append(disc[i])
                t5_parts.append(v5[i])
            n_tianchi = sum(len(c) for c in crops)
            sp_t_step: dict[str, list[torch.Tensor]] = {name: [] for name in sp_t}
            for j in sp_order[step * sp_per_step : (step + 1) * sp_per_step]:
                it_s = spider[j]
                rows = torch.from_numpy(np.flatnonzero(it_s.use))
                if len(rows) == 0:
                    continue
                c = level_crops(torch.from_numpy(it_s.img01)[None], it_s.xy, jitter, crop_size)[rows]
                crops.append(joint.hospital_augment(c, rng))
                lv.append(rows)
                for name in sp_t:
                    sp_t_step[name].append(sp_t[name][j][rows])
            logits = net(torch.cat(crops).to(device), torch.cat(lv).to(device))
            tianchi, sp_logits = logits[:n_tianchi], logits[n_tianchi:]
            tv, td, t5 = (torch.cat(p).to(device) for p in (tv_parts, td_parts, t5_parts))
            loss = logits.new_zeros(())
            if (tv >= 0).any():
                loss = loss + F.cross_entropy(tianchi[tv >= 0][:, VERT], tv[tv >= 0], label_smoothing=0.05)
            if (td >= 0).any():
                loss = loss + F.cross_entropy(
                    tianchi[td >= 0][:, DISC], td[td >= 0], weight=disc_w, label_smoothing=0.05
                )
            if (t5 >= 0).any():
                loss = loss + F.binary_cross_entropy_with_logits(
                    tianchi[t5 >= 0][:, V5], t5[t5 >= 0].float(), pos_weight=pos_weight
                )
            if len(sp_logits):
                targets = {name: torch.cat(v).to(device) for name, v in sp_t_step.items()}
                loss = loss + joint.spider_loss(sp_logits, targets, sp_w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if epoch % 3 == 2 or epoch == epochs - 1:
            log(f"grader epoch {epoch + 1}/{epochs} loss {total / per_epoch:.3f} ({time.time() - t0:.1f}s)")
    return net.eval()


def _fill_missing(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    idx = np.arange(len(xy))
    out = xy.copy()
    for d in range(2):
        out[:, d] = np.interp(idx, idx[mask], xy[mask, d])
    return out


def predict(analyzer: Analyzer | Member, items: list[Item]) -> list[dict[str, Any]]:
    """Out-of-fold raw outputs: xy, localisation, probabilities."""
    out = []
    for it in items:
        xy, loc = analyzer.locate(it.img01)
        probs = analyzer.grade(it.img01, xy)
        out.append({"study_uid": it.study.study_uid, "xy": xy.tolist(), "loc": loc.tolist(), "probs": probs.tolist()})
    return out


def tune_decision(items: list[Item], preds: list[dict], rounds: int = 3) -> Decision:
    """Coordinate ascent on macro-F1 over the bias grid (biases are log-prior shifts)."""
    d = Decision()
    grid = np.round(np.arange(-1.5, 1.51, 0.25), 2)
    best = evaluate(results_for(items, preds, d), False)["tianchi_macro_f1"]
    for _ in range(rounds):
        improved = False
        for attr, n in (("vertebra_bias", 2), ("disc_bias", 4)):
            for j in range(1, n):  # class 0 is the reference
                for v in grid:
                    cand = Decision(list(d.vertebra_bias), list(d.disc_bias), d.v5_threshold)
                    getattr(cand, attr)[j] = float(v)
                    score = evaluate(results_for(items, preds, cand), False)["tianchi_macro_f1"]
                    if score > best + 1e-9:
                        best, d, improved = score, cand, True
        for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            cand = Decision(list(d.vertebra_bias), list(d.disc_bias), t)
            score = evaluate(results_for(items, preds, cand), False)["tianchi_macro_f1"]
            if score > best + 1e-9:
                best, d, improved = score, cand, True
        if not improved:
            break
    return d


def folds_of(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def held_out(k: int, items: Sequence[Item], val: np.ndarray) -> dict[str, Any]:
    """What a fold model records of its fold, so that `ai.training.ensemble.same_fold` can refuse a model that saw its
    held-out studies."""
    return {"fold": k + 1, "val_studies": [items[i].study.study_uid for i in val]}


def resumed(folder: Path, recipe: Recipe, device: str, val_studies: list[str] | None = None) -> Member | None:
    """The model an earlier, cut-short run of the same recipe left in `folder` (`dicomnode train --resume`), or None
    where it left none. `model.json` is written after the weights, so its presence means a whole model. Its
    held-out predictions come from the fp16 weights on disk: they may differ from an unbroken run's in the last
    digits. A folder of another fold or recipe is refused rather than mixed in."""
    if not (folder / "model.json").is_file():
        return None
    meta = json.loads((folder / "model.json").read_text())
    if meta.get("val_studies") != val_studies:
        raise ValueError(f"{folder} holds a model of another fold: resume into a fresh --out or delete it")
    wanted: dict[str, Any] = {"width": recipe.width, "input_size": recipe.input_size}
    if (folder / "grader.safetensors").is_file():
        wanted |= {"crop_size": recipe.crop_size, "grader_arch": recipe.grader_arch}
    if other := {k: meta[k] for k, v in wanted.items() if k in meta and meta[k] != v}:
        raise ValueError(f"{folder} holds a model of another recipe ({other}): resume into a fresh --out")
    return Member.load(folder, device, fused=False, int8_grader=False)


def fold_model(
    out_dir: Path,
    k: int,
    items: Sequence[Item],
    val: np.ndarray,
    recipe: Recipe,
    device: str,
    resume: bool,
    log: Log,
    train: Callable[[], Member],
) -> Member:
    """Fold k's model: the one a cut-short run left (`resumed`) when resuming, else `train()`'s, saved with its fold."""
    folder, held = out_dir / f"fold{k + 1}", held_out(k, items, val)
    if resume and (member := resumed(folder, recipe, device, held["val_studies"])) is not None:
        log(f"fold {k + 1} resumed from {folder}")
        return member
    member = train()
    member.save(folder, held)
    return member


def fit(
    items: list[Item],
    recipe: Recipe,
    seed: int,
    log: Log,
    device: str = "cpu",
    spider: Sequence[SpiderItem] | None = None,
    landmarks_from: Path | None = None,
) -> Member:
    """landmarks_from: a model folder whose landmark net is taken as it is (the same fold of an earlier run), so
    that graders of several seeds are cross-validated at the same held-out points without training it again."""
    meta: dict[str, Any] = {
        "width": recipe.width,
        "input_size": recipe.input_size,
        "crop_size": recipe.crop_size,
        "grader_arch": recipe.grader_arch,
    }
    lm: Any
    if landmarks_from is not None:
        source = Member.load(landmarks_from, device, fused=False)
        lm = source.landmarks
        meta.update({k: source.meta[k] for k in ("width", "input_size") if k in source.meta})
        log(f"landmark net taken from {landmarks_from}")
    elif recipe.detector == "yolo":
        from ai.seed import IMGSZ, train_detector

        lm = train_detector(items, recipe.lm_epochs, seed, log)
        meta.update(detector="yolo", input_size=IMGSZ)
    else:
        lm = train_landmarks(items, recipe.lm_epochs, seed, log, recipe, device)
    gr = train_grader(items, recipe.gr_epochs, seed, log, recipe.grader_arch, recipe.crop_size, device, spider)
    if spider:
        meta["grader_outputs"] = N_GRADES_BOTH
    return Member(lm, gr, meta, torch.device(device))


def predict_spider(analyzer: Analyzer | Member, items: Sequence[SpiderItem]) -> list[dict[str, Any]]:
    """Held-out SPIDER probabilities, graded at the points the slices were located at (no coordinates to learn)."""
    return [
        {
            "instance_uid": it.study.instance_uid,
            "xy": it.xy.tolist(),
            "probs": analyzer.grade(it.img01, it.xy.astype(np.float32)).tolist(),
        }
        for it in items
    ]


def summarise(
    items: list[Item],
    oof: list[dict],
    splits: list[np.ndarray],
    spider: tuple[Sequence[SpiderItem], list[dict], list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """CV figures from out-of-fold predictions: each fold scored with a decision tuned on the other folds. With
    spider (items, out-of-fold predictions, folds), fold k of both sets is held out together and the decision is
    tuned on both (`ai.training.joint.tune_joint`)."""
    if spider is not None:
        return joint.summarise_joint(items, oof, splits, *spider) | _calibration(items, oof, splits)
    report: dict[str, Any] = {}
    per_fold = []
    for val in splits:
        held = set(val)
        others = [i for i in range(len(items)) if i not in held]
        dec = tune_decision([items[i] for i in others], [oof[i] for i in others])
        m = evaluate(results_for([items[i] for i in val], [oof[i] for i in val], dec))
        m["decision"] = dec.to_dict()
        per_fold.append(m)
    report["per_fold"] = per_fold
    report["cv_mean"] = {key: round(float(np.mean([m[key] for m in per_fold])), 4) for key in METRIC_KEYS}
    report["cv_untuned_pooled"] = evaluate(results_for(items, oof, Decision()))
    report.update(_calibration(items, oof, splits))
    final_decision = tune_decision(items, oof)
    report["decision"] = final_decision.to_dict()
    report["cv_pooled_tuned_in_sample"] = evaluate(results_for(items, oof, final_decision))
    return report


def _calibration(items: list[Item], oof: list[dict], splits: list[np.ndarray]) -> dict[str, Any]:
    """Expected calibration error of the grader's confidences on held-out folds (what the SR reports), as is and
    with per-head temperatures fitted on the other folds: the evidence for shipping them or not. Both are means
    of per-fold figures, so they compare; the pooled figure (all 150 at once) is lower, fewer studies per bin."""
    studies = [it.study for it in items]
    plain, scaled = [], []
    for val in splits:
        held = set(val)
        others = [i for i in range(len(items)) if i not in held]
        temps = fit_temperatures([studies[i] for i in others], [oof[i] for i in others])
        plain.append(calibration_error([studies[i] for i in val], [oof[i] for i in val]))
        scaled.append(calibration_error([studies[i] for i in val], [oof[i] for i in val], temps))
    mean = lambda per: {head: round(float(np.mean([f[head] for f in per])), 4) for head in per[0]}  # noqa: E731
    return {
        "calibration_ece_oof_pooled": calibration_error(studies, oof),
        "calibration_ece_oof": mean(plain),
        "calibration_ece_temperature_nested": mean(scaled),
    }


def run_landmarks(
    data_dir: Path,
    out_dir: Path,
    recipe: Recipe = Recipe(),
    folds: int = 5,
    seed: int = 0,
    log: Log = print,
    device: str = "cpu",
    final: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Landmark nets only, for a locating set (`ai.training.ensemble --locate`): a final fit, then one net per fold (the
    folds and seeds of `run`) with its held-out points in oof.json and within 6 mm per fold in cv.json. resume: the
    nets a cut-short run of the same recipe left in out_dir are loaded, not trained again (`resumed`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = prepare(load_dataset(data_dir), recipe.input_size)
    meta = {"width": recipe.width, "input_size": recipe.input_size, "recipe": asdict(recipe)}
    dev = torch.device(device)
    if final and not (resume and resumed(out_dir, recipe, device)):
        Member(train_landmarks(items, recipe.lm_epochs, seed + 100, log, recipe, device), None, meta, dev).save(out_dir)
    oof: list[dict[str, Any]] = []
    per_fold = []
    for k, val in enumerate(folds_of(len(items), folds, 0) if folds > 1 else []):
        held = set(val.tolist())
        train = [it for i, it in enumerate(items) if i not in held]
        member = fold_model(
            out_dir,
            k,
            items,
            val,
            recipe,
            device,
            resume,
            log,
            # called at once, in this iteration: the loop variables it reads are this fold's
            lambda: Member(train_landmarks(train, recipe.lm_epochs, seed + k, log, recipe, device), None, meta, dev),  # noqa: B023
        )
        hits = points = 0
        for i in val:
            it = items[i]
            xy, loc = member.locate(it.img01)
            oof.append({"study_uid": it.study.study_uid, "xy": xy.tolist(), "loc": loc.tolist()})
            (sy, sx), m = it.spacing, it.mask
            hits += int((np.hypot((xy[m, 0] - it.xy[m, 0]) * sx, (xy[m, 1] - it.xy[m, 1]) * sy) < HIT_MM).sum())
            points += int(m.sum())
        per_fold.append({"fold": k + 1, "within_6mm": round(hits / points, 4)})
        log(f"fold {k + 1}/{folds}: within 6 mm {per_fold[-1]['within_6mm']}")
    report = {"recipe": asdict(recipe), "seed": seed, "folds": folds, "per_fold": per_fold}
    if per_fold:
        report["cv_mean"] = {"within_6mm": round(float(np.mean([f["within_6mm"] for f in per_fold])), 4)}
        (out_dir / "oof.json").write_text(json.dumps(oof))
    (out_dir / "cv.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run(
    data_dir: Path,
    out_dir: Path,
    recipe: Recipe = Recipe(),
    folds: int = 5,
    seed: int = 0,
    final: bool = True,
    log: Log = print,
    device: str = "cpu",
    spider_dir: Path | None = None,
    spider_locator: str = "default",
    landmarks_from: Path | None = None,
    fold_seed: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """The final fit comes first, so a run cut short still leaves a usable model; its decision rule is written
    once the folds have been scored. spider_dir: SPIDER's graded discs train the grader too, located by
    spider_locator (a model that never saw SPIDER). landmarks_from: an earlier run's folder (same data, folds and
    seed) whose final and fold landmark nets are reused. resume: the models a cut-short run of the same recipe left
    in out_dir are loaded, not trained again (`resumed`): a night's training survives a stop between folds."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    items = prepare(load_dataset(data_dir), recipe.input_size)
    log(f"{len(items)} studies loaded")
    spider: list[SpiderItem] = []
    if spider_dir is not None:
        spider = joint.prepare_spider(load_spider(spider_dir), Analyzer.load(spider_locator, device))
        log(f"{len(spider)} SPIDER slices located, {sum(int(it.use.sum()) for it in spider)} discs used")
    report: dict[str, Any] = {
        "folds": folds,
        "seed": seed,
        "fold_seed": fold_seed,
        "recipe": asdict(recipe),
        "device": device,
        "per_fold": [],
    }
    if spider:
        report["spider"] = {"data": str(spider_dir), "locator": spider_locator}
    if landmarks_from:
        report["landmarks_from"] = str(landmarks_from)
    final_model = None
    if final:
        t0 = time.time()
        final_model = resumed(out_dir, recipe, device) if resume else None
        final_model = final_model or fit(items, recipe, seed + 100, log, device, spider or None, landmarks_from)
        report["final_fit_seconds"] = round(time.time() - t0)
        final_model.meta["version"] = time.strftime("%Y%m%d")
        final_model.save(out_dir, {"cv_mean": None, "trained_on": len(items)})
    oof: list[dict | None] = [None] * len(items)
    spider_oof: list[dict | None] = [None] * len(spider)
    # The folds do not follow the model's seed: members of an ensemble are cross-validated on the same studies.
    splits = folds_of(len(items), folds, fold_seed) if folds > 1 else []
    spider_splits = (
        folds_of(len(spider), folds, fold_seed) if folds > 1 and spider else [np.zeros(0, int)] * len(splits)
    )
    for k, (val, sval) in enumerate(zip(splits, spider_splits, strict=True)):
        t0 = time.time()
        train = [items[i] for i in range(len(items)) if i not in set(val)]
        strain = [spider[i] for i in range(len(spider)) if i not in set(sval)]
        model = fold_model(
            out_dir,
            k,
            items,
            val,
            recipe,
            device,
            resume,
            log,
            functools.partial(
                fit,
                train,
                recipe,
                seed + k,
                log,
                device,
                strain or None,
                landmarks_from / f"fold{k + 1}" if landmarks_from else None,
            ),
        )
        for i, p in zip(val, predict(model, [items[i] for i in val]), strict=True):
            oof[i] = p
        for i, p in zip(sval, predict_spider(model, [spider[i] for i in sval]), strict=True):
            spider_oof[i] = p
        log(f"fold {k + 1}/{folds} trained in {time.time() - t0:.0f}s")
        (out_dir / "oof.json").write_text(json.dumps([o for o in oof if o is not None]))
        if spider:
            (out_dir / "oof_spider.json").write_text(json.dumps([o for o in spider_oof if o is not None]))
    if splits:
        both = (spider, [o for o in spider_oof if o is not None], spider_splits) if spider else None
        report.update(summarise(items, [o for o in oof if o is not None], splits, both))
        for k, m in enumerate(report["per_fold"], 1):
            extra = f" SPIDER herniation balanced accuracy {m['spider_herniation_balanced_accuracy']}" if spider else ""
            log(f"fold {k}: macro-F1 {m['tianchi_macro_f1']} within 6 mm {m['within_6mm']}{extra}")
    if final_model is not None:
        final_model.meta["decision"] = report.get("decision", Decision().to_dict())
        final_model.save(
            out_dir,
            {
                "cv_mean": report.get("cv_mean"),
                "trained_on": len(items),
                **({"spider_trained_on": len(spider)} if spider else {}),
            },
        )
        if final_model.grader is not None:
            calibrate_folder(out_dir, items)
    report["total_seconds"] = round(time.time() - t_start)
    report["torch_threads"] = torch.get_num_threads()
    (out_dir / "cv.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
