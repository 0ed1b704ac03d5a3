"""The one inference entry point: a 2-D slice and its PixelSpacing in, 11 graded levels out.

Models load once per worker (`Analyzer.load`), never per job."""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ai import quantize
from ai.chain import carry, repair_skip
from ai.decide import Decision
from ai.imaging import INPUT_SIZE, Letterbox, crop_patch, letterbox_tensor, normalise, spine_geometry
from ai.labels import LEVELS, level_kind
from ai.models import (
    BULGING, CROP_SIZE, CROP_SPACINGS, DISC, FINDINGS, HERNIATION, N_GRADES, N_GRADES_BOTH, PFIRRMANN, SPIDER_FINDINGS,
    V5, VERT, Grader, LandmarkNet, decode_heatmaps,
)

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
log = structlog.get_logger("ai.infer")


@dataclass
class LevelResult:
    level: str
    kind: str
    x: float  # column, pixels of the analysed slice
    y: float  # row
    labels: list[str]
    confidence: float  # of the grading
    localisation: float  # heatmap mass near the peak, 0..1 (an ensemble's: times `agreement`; 0: put in a gap)
    agreement: float = 1.0  # share of an ensemble's landmark nets within AGREE_SPACINGS of the median point
    pfirrmann: int | None = None  # disc degeneration grade 1..5 (a grader with SPIDER heads; None for a vertebra)
    pfirrmann_confidence: float | None = None
    findings: dict[str, float] | None = None  # a disc's other SPIDER findings: probability of each (model card)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["x"], d["y"] = round(self.x, 2), round(self.y, 2)
        d["confidence"], d["localisation"] = round(self.confidence, 4), round(self.localisation, 4)
        d["agreement"] = round(self.agreement, 4)
        if self.pfirrmann_confidence is not None:
            d["pfirrmann_confidence"] = round(self.pfirrmann_confidence, 4)
        if self.findings is not None:
            d["findings"] = {k: round(v, 4) for k, v in self.findings.items()}
        return d


@dataclass
class Located:
    """A slice's points before grading: what slice selection compares."""

    img01: np.ndarray
    xy: np.ndarray  # (11, 2)
    loc: np.ndarray  # (11,) heatmap confidence
    agreement: np.ndarray  # (11,)

    @property
    def localisation(self) -> np.ndarray:
        return self.loc * self.agreement

    @property
    def score(self) -> float:
        """Mean localisation: how confidently this slice shows the whole lumbar spine."""
        return float(np.mean(self.localisation))


AGREE_SPACINGS = 0.5  # a net whose point is further than this (in local level spacings) from the median disagrees


def numbering_uncertain(levels: list[LevelResult]) -> bool:
    """True when the landmark nets disagree at most levels: one of them put the whole chain a vertebra off, so
    the level names (L1..L5) may be shifted even where the points look right. Measured on the CV folds: members
    agree on 133 of 150 studies; the 17 they do not hold 38 of the 106 points outside 6 mm."""
    return bool(levels) and float(np.median([lv.agreement for lv in levels])) < 1.0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Analyzer:
    """Landmark net + grader + decision rule, loaded once."""

    def __init__(self, landmarks: Any, grader: Grader | None, decision: Decision, meta: dict,
                 device: torch.device) -> None:
        # None: a grading-only member of an ensemble (its points come from the locating members)
        self.landmarks = landmarks.to(device).eval() if landmarks is not None else None
        self.grader = grader.to(device).eval() if grader is not None else None  # None: a locating-only member
        self.decision = decision
        self.meta = meta
        self.device = device

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    @property
    def int8_graders(self) -> bool:
        """Whether grading runs in int8: evaluate reports it, so a figure says what produced it."""
        return self.grader is not None and quantize.is_int8(self.grader)

    @classmethod
    def load(cls, model: str | Path = "default", device: str = "auto", fused: bool = True,
             int8: bool = True) -> "Analyzer":
        """fused: the networks as `for_inference` makes them (faster, same outputs; their state dicts no longer
        match the files, so a model to be saved again loads with fused=False). int8: on a CPU, with fused, a
        grader whose activation ranges were measured (`ai.quantize`) runs in int8."""
        folder = Path(model) if Path(model).is_dir() else WEIGHTS_ROOT / str(model)
        meta_path = folder / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no model at {folder} (model.json missing)")
        meta = json.loads(meta_path.read_text())
        if "ensemble" in meta:
            return Ensemble.load(folder, meta, device, fused, int8)
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
        gr = None
        if (folder / "grader.safetensors").is_file():
            gr = Grader(meta.get("grader_arch", "resnet18"), int(meta.get("grader_outputs", N_GRADES)))
            gr.load_state_dict(_weights(folder / "grader.safetensors"))
            in8 = fused and int8 and dev.type == "cpu"
            gr = _int8_grader(gr, meta, folder) if in8 else prepare(gr)
        return cls(lm, gr, Decision.from_dict(meta["decision"]), meta, dev)

    def save(self, folder: Path, extra_meta: dict | None = None) -> None:
        if any(isinstance(net, torch.fx.GraphModule) for net in (self.landmarks, self.grader)):
            raise ValueError("a model loaded for inference (fused) cannot be saved: load it with fused=False")
        if self.landmarks is None:
            raise ValueError("a grading-only ensemble member is copied by ai.ensemble, not saved")
        folder.mkdir(parents=True, exist_ok=True)
        half = lambda sd: {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in sd.items()}  # noqa: E731
        name = "detector.safetensors" if self.meta.get("detector") == "yolo" else "landmarks.safetensors"
        save_file(half(self.landmarks.state_dict()), folder / name)
        if self.grader is not None:
            save_file(half(self.grader.state_dict()), folder / "grader.safetensors")
        meta = dict(self.meta, decision=self.decision.to_dict(), **(extra_meta or {}))
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    def locate(self, img01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(11, 2) xy in slice pixels and (11,) localisation confidence."""
        return self.locate_many([img01])[0]

    @torch.inference_mode()
    def locate_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """locate() for several slices in one batch: a series' candidate slices cost about a quarter less so."""
        if hasattr(self.landmarks, "locate") or not imgs:  # the seed's YOLO detector takes one at a time
            return [self.landmarks.locate(img) for img in imgs]
        size = int(self.meta.get("input_size", INPUT_SIZE))
        boxes = [Letterbox.fit(*img.shape, size=size) for img in imgs]
        x = torch.stack([letterbox_tensor(img, box, size) for img, box in zip(imgs, boxes)]).to(self.device)
        xy, conf = decode_heatmaps(self.landmarks(x).float().cpu())
        out = []
        for i, box in enumerate(boxes):
            fixed, source = repair_skip(box.to_image(xy[i].numpy()))
            out.append((fixed.astype(np.float32), carry(conf[i].numpy(), source, inserted=0.0).astype(np.float32)))
        return out

    @torch.inference_mode()
    def grade(self, img01: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """(11, 7) probabilities: vertebra softmax | disc softmax | v5 sigmoid."""
        size = int(self.meta.get("crop_size", CROP_SIZE))
        crops = level_crops(torch.from_numpy(img01)[None], xy, size=size).to(self.device)
        logits = self.grader(crops, torch.arange(len(LEVELS), device=self.device)).float().cpu()
        return grade_probs(logits).numpy()

    def analyze(self, pixels: np.ndarray, spacing: tuple[float, float]) -> list[LevelResult]:
        """spacing is (row, column) mm; kept in the signature because callers and future models use it."""
        del spacing
        return self.grade_slice(self.locate_slices([pixels])[0])

    def locate_slices(self, pixels: list[np.ndarray]) -> list[Located]:
        """The first half of analyze: enough to compare candidate slices before paying for the grading."""
        imgs = [normalise(p) for p in pixels]
        return [Located(img, *found) for img, found in zip(imgs, self.points_many(imgs))]

    def grade_slice(self, found: Located) -> list[LevelResult]:
        probs = self.grade(found.img01, found.xy)
        out = []
        for i, level in enumerate(LEVELS):
            labels, conf = self.decision.labels(level, probs[i])
            grade, grade_conf = self.decision.pfirrmann(level, probs[i]) or (None, None)
            findings = ({name: float(p) for name, p in zip(SPIDER_FINDINGS, probs[i][FINDINGS], strict=True)}
                        if grade is not None else None)
            out.append(LevelResult(level, level_kind(level), float(found.xy[i, 0]), float(found.xy[i, 1]), labels,
                                   conf, float(found.localisation[i]), float(found.agreement[i]), grade, grade_conf,
                                   findings))
        return out

    def points_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """locate_many() plus per-level agreement (always 1 for one model)."""
        return [(xy, loc, np.ones(len(xy))) for xy, loc in self.locate_many(imgs)]


def combine_grades(each: list[np.ndarray], tianchi: list[bool] | None = None) -> np.ndarray:
    """The graders' (11, K) probabilities as one: the Tianchi heads averaged over the graders marked in `tianchi`
    (default: all), the SPIDER heads over the graders that have them. A grader trained on both sets grades Tianchi's
    classes less well than one trained on Tianchi alone (model card), so an ensemble may read those from the latter."""
    use = tianchi if tianchi is not None else [True] * len(each)
    first = np.mean([p[:, :N_GRADES] for p, u in zip(each, use, strict=True) if u], 0)
    rest = [p[:, N_GRADES:] for p in each if p.shape[1] == N_GRADES_BOTH]
    return np.concatenate([first, np.mean(rest, 0)], 1) if rest else first


class Ensemble(Analyzer):
    """Models trained apart on the same data. Points: the per-level median of the members' points, so a member
    that numbered the spine one vertebra off is outvoted. Grades: the mean of the graders' probabilities at those
    points (`combine_grades`). model.json names the member folders under "ensemble"; each is a complete model
    folder; "tianchi_heads" (optional) names the graders whose Tianchi heads are read."""

    def __init__(self, locators: list[Analyzer], graders: list[Analyzer], decision: Decision, meta: dict,
                 tianchi: list[bool] | None = None) -> None:
        if not locators or not graders:
            raise ValueError("an ensemble needs at least one locating and one grading member")
        self.locators, self.graders, self.tianchi = locators, graders, tianchi
        self.decision, self.meta, self.device = decision, meta, locators[0].device

    @classmethod
    def load(cls, folder: Path, meta: dict, device: str = "auto", fused: bool = True,  # type: ignore[override]
             int8: bool = True) -> "Ensemble":
        spec = meta["ensemble"]
        members = {name: Analyzer.load(folder / name, device, fused, int8) for name in spec["members"]}
        tianchi = [n in spec["tianchi_heads"] for n in spec["grade"]] if "tianchi_heads" in spec else None
        return cls([members[n] for n in spec["locate"]], [members[n] for n in spec["grade"]],
                   Decision.from_dict(meta["decision"]), meta, tianchi)

    @property
    def int8_graders(self) -> bool:
        return all(m.int8_graders for m in self.graders)

    def save(self, folder: Path, extra_meta: dict | None = None) -> None:
        raise NotImplementedError("ensembles are assembled from trained member folders (ai.ensemble)")

    def locate_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(xy, loc) for xy, loc, _ in self.points_many(imgs)]

    def points_many(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        per_member = [m.locate_many(imgs) for m in self.locators]
        out = []
        for i in range(len(imgs)):
            found = [member[i] for member in per_member]
            each = np.stack([xy for xy, _ in found])  # (members, 11, 2)
            median = np.median(each, 0)
            _, spacing = spine_geometry(median.astype(np.float32))
            near = np.linalg.norm(each - median[None], axis=2) <= AGREE_SPACINGS * np.maximum(spacing, 1.0)[None]
            out.append((median, np.mean(np.stack([c for _, c in found]), 0), near.mean(0)))
        return out

    def grade(self, img01: np.ndarray, xy: np.ndarray) -> np.ndarray:
        return combine_grades([m.grade(img01, xy) for m in self.graders], self.tianchi)


def _int8_grader(grader: Grader, meta: dict, folder: Path) -> nn.Module:
    """The int8 grader where its ranges were measured and this CPU has the kernels, else the fused fp32 one."""
    ranges = meta.get(quantize.RANGES_KEY)
    if ranges and quantize.available():
        example = quantize.example_inputs(int(meta.get("crop_size", CROP_SIZE)))
        try:
            model = quantize.quantized(grader, ranges, example)
            gc.collect()  # the traced float copies sit in reference cycles: gone now, not after four graders
            return model
        except Exception as exc:  # noqa: BLE001 - ranges of another network, a torch that traces differently:
            # slower, never wrong, and never a node that cannot start
            log.warning("int8 grader unavailable, running fp32", model=str(folder),
                        reason=f"{type(exc).__name__}: {exc}")
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
    return {k: v.float() * raw[k + INT8_SCALE] if k + INT8_SCALE in raw else v.float()
            for k, v in raw.items() if not k.endswith(INT8_SCALE)}


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
    return crop_patch(img.float(), torch.from_numpy(centre).float(), torch.from_numpy(axis).float(),
                      torch.from_numpy(side).float(), size, aspect)


def grade_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per head: softmax for the exclusive grades, sigmoid for yes/no findings."""
    parts = [logits[:, VERT].softmax(1), logits[:, DISC].softmax(1), logits[:, V5 : V5 + 1].sigmoid()]
    if logits.shape[1] == N_GRADES_BOTH:
        parts += [logits[:, HERNIATION : BULGING + 1].sigmoid(), logits[:, PFIRRMANN].softmax(1),
                  logits[:, FINDINGS].sigmoid()]
    return torch.cat(parts, 1)
