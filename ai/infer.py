"""The one inference entry point: a 2-D slice in, 11 located and graded levels out.

Models load once per worker (`Analyzer.load`), never per job. Runtime only: nothing here imports training code."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ai.chain import carry, repair_fold, repair_skip
from ai.decide import Decision
from ai.imaging import INPUT_SIZE, Letterbox, SpineBox, crop_patch, letterbox_tensor, normalise, spine_geometry
from ai.int8 import RANGES_KEY, available, example_inputs, is_int8, quantized
from ai.labels import LEVELS, level_kind
from ai.models import (
    BULGING,
    CROP_SIZE,
    CROP_SPACINGS,
    DISC,
    FINDINGS,
    HERNIATION,
    N_GRADES,
    N_GRADES_BOTH,
    PFIRRMANN,
    SPIDER_FINDINGS,
    V5,
    VERT,
    Grader,
    LandmarkNet,
    decode_heatmaps,
)
from ai.results import LevelResult, Located
from ai.stenosis import StenosisHead

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
log = structlog.get_logger("ai.infer")


AGREE_SPACINGS = 0.5  # a net whose point is further than this (in local level spacings) from the median disagrees


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _meta_of(folder: Path) -> dict[str, Any]:
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no model at {folder} (model.json missing)")
    return dict(json.loads(meta_path.read_text()))


class Member:
    """One trained model folder: a landmark net, a grader, or both (what `dicomnode train` writes)."""

    def __init__(self, landmarks: Any, grader: nn.Module | None, meta: dict[str, Any], device: torch.device) -> None:
        # None: a grading-only member of an ensemble (its points come from the locating members)
        self.landmarks = landmarks.to(device).eval() if landmarks is not None else None
        self.grader = grader.to(device).eval() if grader is not None else None  # None: a locating-only member
        self.meta = meta
        self.device = device

    @property
    def int8_graders(self) -> bool:
        return self.grader is not None and is_int8(self.grader)

    @classmethod
    def load(cls, folder: Path, device: str = "auto", fused: bool = True, int8_grader: bool = True) -> Member:
        """fused: the networks as `for_inference` makes them (faster, same outputs; their state dicts no longer
        match the files, so a model to be saved again loads with fused=False). int8_grader: on a CPU, with fused, a
        grader whose activation ranges were measured (`ai.training.quantize`) runs in int8."""
        meta = _meta_of(folder)
        lm: Any
        dev = pick_device(device)
        prepare = for_inference if fused else (lambda net: net)
        if meta.get("detector") == "yolo":
            from ai.seed import SeedDetector

            lm = SeedDetector.build(_weights(folder / "detector.safetensors"))
        elif (folder / "landmarks.safetensors").is_file() or not (folder / "grader.safetensors").is_file():
            lm = LandmarkNet(meta.get("width", 16))
            lm.load_state_dict(_weights(folder / "landmarks.safetensors"))
            lm = prepare(lm)
        else:
            lm = None  # a grading-only ensemble member
        gr: nn.Module | None = None
        if (folder / "grader.safetensors").is_file():
            net = Grader(meta.get("grader_arch", "resnet18"), int(meta.get("grader_outputs", N_GRADES)))
            net.load_state_dict(_weights(folder / "grader.safetensors"))
            gr = _int8_grader(net, meta, folder) if fused and int8_grader and dev.type == "cpu" else prepare(net)
        return cls(lm, gr, meta, dev)

    def save(self, folder: Path, extra_meta: dict[str, Any] | None = None) -> None:
        """fp16 weights and model.json (with the decision rule of meta["decision"], else the untuned one)."""
        if any(isinstance(net, torch.fx.GraphModule) for net in (self.landmarks, self.grader)):
            raise ValueError("a model loaded for inference (fused) cannot be saved: load it with fused=False")
        folder.mkdir(parents=True, exist_ok=True)
        half = lambda sd: {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in sd.items()}  # noqa: E731
        if self.landmarks is not None:  # None: a grading-only member of an ensemble
            name = "detector.safetensors" if self.meta.get("detector") == "yolo" else "landmarks.safetensors"
            save_file(half(self.landmarks.state_dict()), folder / name)
        if self.grader is not None:
            save_file(half(self.grader.state_dict()), folder / "grader.safetensors")
        meta = {"decision": Decision().to_dict(), **self.meta, **(extra_meta or {})}
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    def locate(self, img01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(11, 2) xy in slice pixels and (11,) localisation confidence."""
        return self.locate_many([img01])[0]

    @torch.inference_mode()
    def locate_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """locate() for several slices in one batch: a series' candidate slices cost about a quarter less so."""
        if self.landmarks is None:
            raise ValueError("this model folder has no landmark net")
        if hasattr(self.landmarks, "locate") or not imgs:  # the seed's YOLO detector takes one at a time
            return [self.landmarks.locate(img) for img in imgs]
        size = int(self.meta.get("input_size", INPUT_SIZE))
        boxes = [Letterbox.fit(img.shape[0], img.shape[1], size) for img in imgs]
        x = torch.stack([letterbox_tensor(img, box, size) for img, box in zip(imgs, boxes, strict=True)])
        xy, conf = decode_heatmaps(self.landmarks(x.to(self.device)).float().cpu())
        out = []
        for i, box in enumerate(boxes):
            fixed, source = repair_skip(box.to_image(xy[i].numpy()))
            out.append((fixed.astype(np.float32), carry(conf[i].numpy(), source, inserted=0.0).astype(np.float32)))
        return out

    @torch.inference_mode()
    def grade(self, img01: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """(11, K) probabilities: vertebra softmax | disc softmax | v5 sigmoid (| SPIDER's heads, `grade_probs`)."""
        if self.grader is None:
            raise ValueError("this model folder has no grader")
        size = int(self.meta.get("crop_size", CROP_SIZE))
        crops = level_crops(torch.from_numpy(img01)[None], xy, size=size).to(self.device)
        logits = self.grader(crops, torch.arange(len(LEVELS), device=self.device)).float().cpu()
        return grade_probs(logits).numpy()


class Analyzer:
    """A model as the node runs it: locating members, grading members and a decision rule, loaded once. One model
    folder is its own only member; an ensemble folder names its members. Points: the per-level median of the
    locators' points, so a member that numbered the spine one vertebra off is outvoted. Grades: the graders'
    probabilities at those points, combined by `combine_grades`."""

    def __init__(
        self,
        locators: list[Member],
        graders: list[Member],
        decision: Decision,
        meta: dict[str, Any],
        tianchi: list[bool] | None = None,
    ) -> None:
        if not locators:
            raise ValueError("a model needs at least one locating member")
        self.locators, self.graders, self.tianchi = locators, graders, tianchi
        self.decision, self.meta, self.device = decision, meta, locators[0].device
        self.stenosis = StenosisHead.from_dict(meta.get("stenosis_head"))  # canal stenosis, where the model has it

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    @property
    def int8_graders(self) -> bool:
        """Whether grading runs in int8: evaluate reports it, so a figure says what produced it."""
        return bool(self.graders) and all(m.int8_graders for m in self.graders)

    @classmethod
    def load(
        cls, model: str | Path = "default", device: str = "auto", fused: bool = True, int8: bool = True
    ) -> Analyzer:
        """model: a folder, or the name of one under ai/weights. model.json's "ensemble" (optional) names the
        member folders that locate and grade; "tianchi_heads" the graders whose Tianchi heads are read."""
        folder = Path(model) if Path(model).is_dir() else WEIGHTS_ROOT / str(model)
        meta = _meta_of(folder)
        decision = Decision.from_dict(meta["decision"])
        spec = meta.get("ensemble")
        if spec is None:
            one = Member.load(folder, device, fused, int8)
            return cls([one], [one] if one.grader is not None else [], decision, meta)
        members = {name: Member.load(folder / name, device, fused, int8) for name in spec["members"]}
        tianchi = [n in spec["tianchi_heads"] for n in spec["grade"]] if "tianchi_heads" in spec else None
        return cls([members[n] for n in spec["locate"]], [members[n] for n in spec["grade"]], decision, meta, tianchi)

    def locate(self, img01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy, loc, _ = self.points_many([img01])[0]
        return xy, loc

    def member_points(self, imgs: list[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per locator, per slice: (11, 2) points and (11,) localisation. A model whose model.json names
        "roi_spine_lengths" looks twice: the second look sees only a square that many spine lengths wide around the
        first look's median chain (`SpineBox`), so a slice with a tight field of view is located at the scale the
        nets know (model card: cropped slices)."""
        first = [m.locate_many(imgs) for m in self.locators]
        lengths = self.meta.get("roi_spine_lengths")
        if not lengths or not imgs:
            return first
        boxes = [
            SpineBox.around(
                np.median(np.stack([m[i][0] for m in first]), 0), img.shape[0], img.shape[1], float(lengths)
            )
            for i, img in enumerate(imgs)
        ]
        second = [m.locate_many([box.cut(img) for box, img in zip(boxes, imgs, strict=True)]) for m in self.locators]
        return [[(box.to_image(xy), c) for (xy, c), box in zip(member, boxes, strict=True)] for member in second]

    def points_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per slice: (11, 2) median points, (11,) mean localisation, (11,) share of locators that agree. An
        ensemble's median chain that folds back on itself is unfolded (`repair_fold`); the locators that agree are
        counted at the unfolded points, so a repaired chain reads as uncertain numbering."""
        per_member = self.member_points(imgs)
        out = []
        for i in range(len(imgs)):
            found = [member[i] for member in per_member]
            each = np.stack([xy for xy, _ in found])  # (members, 11, 2)
            median, source = np.median(each, 0), np.arange(len(LEVELS))
            if len(found) > 1:
                fixed, source = repair_fold(median)
                median = fixed.astype(median.dtype)
            loc = carry(np.mean(np.stack([c for _, c in found]), 0), source, inserted=0.0)
            _, spacing = spine_geometry(median.astype(np.float32))
            near = np.linalg.norm(each - median[None], axis=2) <= AGREE_SPACINGS * np.maximum(spacing, 1.0)[None]
            out.append((median, loc, near.mean(0)))
        return out

    def grade(self, img01: np.ndarray, xy: np.ndarray) -> np.ndarray:
        if not self.graders:
            raise ValueError("this model has no grader")
        return combine_grades([m.grade(img01, xy) for m in self.graders], self.tianchi)

    def analyze(self, pixels: np.ndarray, spacing: tuple[float, float] | None = None) -> list[LevelResult]:
        """spacing (row, column mm): accepted for callers that have it; no model here uses it."""
        del spacing
        return self.grade_slice(self.locate_slices([pixels])[0])

    def locate_slices(self, pixels: list[np.ndarray]) -> list[Located]:
        """The first half of analyze: enough to compare candidate slices before paying for the grading."""
        imgs = [normalise(p) for p in pixels]
        return [Located(img, *found) for img, found in zip(imgs, self.points_many(imgs), strict=True)]

    def grade_slice(self, found: Located) -> list[LevelResult]:
        probs = self.grade(found.img01, found.xy)
        out = []
        for i, level in enumerate(LEVELS):
            labels, conf = self.decision.labels(level, probs[i])
            grade, grade_conf = self.decision.pfirrmann(level, probs[i]) or (None, None)
            findings = (
                {name: float(p) for name, p in zip(SPIDER_FINDINGS, probs[i][FINDINGS], strict=True)}
                if grade is not None
                else None
            )
            stenosis = None
            if findings is not None and self.stenosis is not None:
                findings["stenosis"] = self.stenosis.probability(probs[i], level)
                stenosis = findings["stenosis"] >= self.stenosis.threshold
            out.append(
                LevelResult(
                    level,
                    level_kind(level),
                    float(found.xy[i, 0]),
                    float(found.xy[i, 1]),
                    labels,
                    conf,
                    float(found.localisation[i]),
                    float(found.agreement[i]),
                    grade,
                    grade_conf,
                    findings,
                    stenosis,
                )
            )
        return out


def combine_grades(each: list[np.ndarray], tianchi: list[bool] | None = None) -> np.ndarray:
    """The graders' (11, K) probabilities as one: the Tianchi heads averaged over the graders marked in `tianchi`
    (default: all), the SPIDER heads over the graders that have them. A grader trained on both sets grades Tianchi's
    classes less well than one trained on Tianchi alone (model card), so an ensemble may read those from the latter."""
    use = tianchi if tianchi is not None else [True] * len(each)
    first = np.mean([p[:, :N_GRADES] for p, u in zip(each, use, strict=True) if u], 0)
    rest = [p[:, N_GRADES:] for p in each if p.shape[1] == N_GRADES_BOTH]
    return np.concatenate([first, np.mean(rest, 0)], 1) if rest else first


def _int8_grader(grader: Grader, meta: dict, folder: Path) -> nn.Module:
    """The int8 grader where its ranges were measured and this CPU has the kernels, else the fused fp32 one."""
    ranges = meta.get(RANGES_KEY)
    if ranges and available():
        example = example_inputs(int(meta.get("crop_size", CROP_SIZE)))
        try:
            model = quantized(grader, ranges, example)
            gc.collect()  # the traced float copies sit in reference cycles: gone now, not after four graders
            return model
        except Exception as exc:  # noqa: BLE001 - ranges of another network, a torch that traces differently:
            # slower, never wrong, and never a node that cannot start
            log.warning(
                "int8 grader unavailable, running fp32", model=str(folder), reason=f"{type(exc).__name__}: {exc}"
            )
    return for_inference(grader)


def for_inference(net: nn.Module) -> nn.Module:
    """The net with each BatchNorm folded into the convolution before it (traced with torch.fx, so the fold
    follows the real data flow) in channels-last layout: about a fifth faster on 2 CPU threads, outputs agreeing to
    1e-4 (benchmarks/inference.py --unfused, tests/test_fused.py)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(net.eval(), inplace=True).to(memory_format=torch.channels_last)


INT8_SCALE = ".int8_scale"  # suffix of the per-channel scale stored beside an int8 weight


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """fp16 or int8 on disk (small files), fp32 in memory (CPU inference)."""
    raw = load_file(path)
    return {
        k: v.float() * raw[k + INT8_SCALE] if k + INT8_SCALE in raw else v.float()
        for k, v in raw.items()
        if not k.endswith(INT8_SCALE)
    }


def store_int8(path: Path) -> None:
    """Rewrites a weight file with its conv and linear weights as int8, one scale per output channel: an
    ensemble's graders are most of its size (22 MB each in fp16), and averaging several of them smooths the
    rounding (measured in the model card)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in load_file(path).items():
        if v.is_floating_point() and v.ndim >= 2 and not k.endswith(INT8_SCALE):
            w = v.float()
            scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / 127
            out[k], out[k + INT8_SCALE] = torch.round(w / scale).to(torch.int8), scale
        else:
            out[k] = v
    save_file(out, path)


def level_crops(img: torch.Tensor, xy: np.ndarray, jitter: dict | None = None, size: int = CROP_SIZE) -> torch.Tensor:
    """(11, 1, CROP, CROP) crops along the spine, sized by the local level spacing and turned upright."""
    axis, spacing = spine_geometry(xy)
    side = np.maximum(spacing * CROP_SPACINGS, 16.0)
    centre = xy.copy()
    aspect = None
    if jitter:
        rng = jitter["rng"]
        n = len(xy)
        ang = np.deg2rad(rng.uniform(-jitter["deg"], jitter["deg"], n))
        c, s = np.cos(ang), np.sin(ang)
        axis = np.stack([c * axis[:, 0] - s * axis[:, 1], s * axis[:, 0] + c * axis[:, 1]], 1)
        side = side * rng.uniform(1 - jitter["scale"], 1 + jitter["scale"], n)
        centre = centre + rng.normal(0, jitter["shift"], (n, 2)) * spacing[:, None]
        if jitter.get("aspect"):
            aspect = torch.from_numpy(np.exp(rng.uniform(-1, 1, n) * np.log(jitter["aspect"]))).float()
    return crop_patch(
        img.float(),
        torch.from_numpy(centre).float(),
        torch.from_numpy(axis).float(),
        torch.from_numpy(side).float(),
        size,
        aspect,
    )


def grade_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per head: softmax for the exclusive grades, sigmoid for yes/no findings."""
    parts = [logits[:, VERT].softmax(1), logits[:, DISC].softmax(1), logits[:, V5 : V5 + 1].sigmoid()]
    if logits.shape[1] == N_GRADES_BOTH:
        parts += [
            logits[:, HERNIATION : BULGING + 1].sigmoid(),
            logits[:, PFIRRMANN].softmax(1),
            logits[:, FINDINGS].sigmoid(),
        ]
    return torch.cat(parts, 1)
