"""The seed pipeline from the student report, kept as the measured baseline (`--model seed`).

An ultralytics YOLO detector finds the 11 levels as boxes drawn around the annotated points by the report's rule;
the box centre of each level's most confident box is its point. The grading stage is the same ResNet crop
grader the default model uses, with the report's ResNet-50. ultralytics is AGPL-3.0 and optional
(`pip install -e ".[seed]"`): the default model never imports it.

Offline and silent: YOLO_OFFLINE, no auto-install, settings sync off, a writable config dir holding a local
Arial.ttf (its font check otherwise downloads one), models built from a .yaml, never a downloaded checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ai.labels import LEVELS

YOLO_SCALE = "n"  # yolov5n: the report used yolov5s at 640 px; n at 320 px keeps 2-core CPU training practical
IMGSZ = 320
BOX_ASPECT = 1.4  # report: width = 1.4 x height
_prepared = False


def offline_ultralytics(cache: Path | None = None) -> Any:
    """Import ultralytics with everything that would reach the internet switched off."""
    global _prepared
    if not _prepared:
        default = Path(cache or Path(tempfile.gettempdir()) / "dicomnode-ultralytics")
        cfg_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default)))
        cfg_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "false"
        font = cfg_dir / "Arial.ttf"
        if not font.exists():
            import matplotlib

            shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
        _prepared = True
    try:
        import ultralytics
        from ultralytics.utils import SETTINGS
    except ImportError as exc:
        raise RuntimeError(
            "the seed model needs the optional 'seed' extra: pip install -e '.[seed]' (ultralytics, AGPL-3.0)"
        ) from exc
    SETTINGS.update({"sync": False})
    return ultralytics


def model_yaml(folder: Path) -> Path:
    """The packaged YOLOv5 architecture with our 11 classes; written next to the weights it describes."""
    ul = offline_ultralytics()
    src = Path(ul.__file__).parent / "cfg" / "models" / "v5" / "yolov5.yaml"
    text = src.read_text().replace("nc: 80", f"nc: {len(LEVELS)}")
    out = folder / f"yolov5{YOLO_SCALE}-spine.yaml"
    out.write_text(text)
    return out


def seed_boxes(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(11, 4) x0, y0, x1, y1 by the report's rule: height = twice the larger vertical gap to a neighbouring
    point (the one neighbour at the ends), width = 1.4 x height. Missing points give NaN rows."""
    boxes = np.full((len(xy), 4), np.nan, np.float32)
    idx = np.flatnonzero(mask)
    for k, i in enumerate(idx):
        gaps = [
            abs(xy[i, 1] - xy[j, 1])
            for j in (idx[k - 1] if k else None, idx[k + 1] if k + 1 < len(idx) else None)
            if j is not None
        ]
        h = 2 * max(gaps) if gaps else 30.0
        w = BOX_ASPECT * h
        boxes[i] = (xy[i, 0] - w / 2, xy[i, 1] - h / 2, xy[i, 0] + w / 2, xy[i, 1] + h / 2)
    return boxes


def write_yolo_dataset(items: list[Any], folder: Path) -> Path:
    """Images (8-bit, per-image min-max as the published slices) and label files; returns the data yaml.
    Built here from our own loader only: a user-supplied dataset yaml may run code (its download key)."""
    img_dir, lab_dir = folder / "images" / "train", folder / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for n, it in enumerate(items):
        h, w = it.img01.shape
        Image.fromarray((it.img01 * 255).astype(np.uint8)).save(img_dir / f"{n:04d}.png")
        lines = []
        for c, b in enumerate(seed_boxes(it.xy, it.mask)):
            if np.isnan(b).any():
                continue
            x0, y0, x1, y1 = np.clip(b, 0, [w, h, w, h])
            lines.append(f"{c} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
        (lab_dir / f"{n:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(LEVELS))
    data = folder / "data.yaml"
    data.write_text(f"path: {folder}\ntrain: images/train\nval: images/train\nnames:\n{names}\n")
    return data


def train_detector(items: list[Any], epochs: int, seed: int, log: Callable[[str], None]) -> SeedDetector:
    ul = offline_ultralytics()
    with tempfile.TemporaryDirectory(prefix="seed-yolo-") as tmp:
        work = Path(tmp)
        data = write_yolo_dataset(items, work / "data")
        yolo = ul.YOLO(str(model_yaml(work)), task="detect")
        # Report hyper-parameters (lr0 0.01, lrf 0.2, momentum 0.937, wd 5e-4, warm-up 3, mixup 0.2); no
        # left-right flips (anatomy has a front and a back), no validation pass (CV scores it instead).
        yolo.train(
            data=str(data),
            epochs=epochs,
            imgsz=IMGSZ,
            batch=16,
            device="cpu",
            workers=0,
            seed=seed,
            lr0=0.01,
            lrf=0.2,
            momentum=0.937,
            weight_decay=5e-4,
            warmup_epochs=3,
            mixup=0.2,
            fliplr=0.0,
            val=False,
            plots=False,
            verbose=False,
            amp=False,
            project=str(work / "runs"),
            name="fit",
            exist_ok=True,
            optimizer="SGD",
        )
        last = work / "runs" / "fit" / "weights" / "last.pt"
        trained = ul.YOLO(str(last), task="detect")
        state = {k: v.detach().float().clone() for k, v in trained.model.state_dict().items()}
    log(f"seed detector trained ({epochs} epochs)")
    return SeedDetector.build(state)


class SeedDetector:
    """YOLO rebuilt from its yaml plus a plain state dict (no pickled checkpoint is shipped or loaded)."""

    def __init__(self, yolo: Any) -> None:
        self.yolo = yolo

    @classmethod
    def build(cls, state: dict[str, torch.Tensor]) -> SeedDetector:
        ul = offline_ultralytics()
        with tempfile.TemporaryDirectory() as tmp:
            yolo = ul.YOLO(str(model_yaml(Path(tmp))), task="detect")
        yolo.model.load_state_dict(state)
        yolo.model.names = dict(enumerate(LEVELS))
        yolo.model.eval()
        return cls(yolo)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.yolo.model.state_dict()

    def to(self, device: torch.device) -> SeedDetector:
        self.device = device
        return self

    def eval(self) -> SeedDetector:
        return self

    def locate(self, img01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(11, 2) xy and (11,) confidence: each level's best box centre; a level without a box is placed
        between its found neighbours with confidence 0 (the grader still needs 11 crops)."""
        rgb = np.repeat((img01 * 255).astype(np.uint8)[..., None], 3, axis=2)
        dev = getattr(self, "device", torch.device("cpu"))
        res = self.yolo.predict(rgb, imgsz=IMGSZ, conf=0.05, iou=0.8, device=str(dev), verbose=False)[0]
        xy = np.full((len(LEVELS), 2), np.nan, np.float32)
        conf = np.zeros(len(LEVELS), np.float32)
        boxes = res.boxes
        for b, c, s in zip(
            boxes.xyxy.cpu().numpy(), boxes.cls.cpu().numpy().astype(int), boxes.conf.cpu().numpy(), strict=True
        ):
            if s > conf[c]:
                conf[c] = s
                xy[c] = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        found = ~np.isnan(xy[:, 0])
        if not found.any():
            h, w = img01.shape
            xy[:] = np.stack([np.full(len(LEVELS), w / 2), np.linspace(0.3 * h, 0.7 * h, len(LEVELS))], 1)
        elif not found.all():
            idx = np.arange(len(LEVELS))
            for d in range(2):
                xy[:, d] = np.interp(idx, idx[found], xy[found, d])
        return xy, conf
