"""Loader for the Tianchi Spark annotation format, with its quirks made explicit.

Quirks kept on purpose (they exist in the real file): a tag may carry both 'disc' and 'vertebra' keys with
one empty; a tag may be empty; disc labels may be combined ('v2,v5', 'v5,v2'); one study has 10 points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch

from ai.imaging import INPUT_SIZE, Letterbox, grey_frame, letterbox_tensor, normalise, read_file
from ai.labels import LEVEL_INDEX, LEVELS, level_kind


@dataclass
class Point:
    level: str
    x: float
    y: float
    labels: list[str]  # e.g. ["v2", "v5"]; empty when the annotation left the tag blank


@dataclass
class Study:
    study_uid: str
    series_uid: str
    instance_uid: str
    path: Path | None  # None: the annotated instance is not among the images (see load_annotations)
    points: dict[str, Point] = field(default_factory=dict)

    def load(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Pixels as float32 and (row, column) spacing in mm."""
        return load_slice(self.path, self.instance_uid)


def load_slice(path: Path | None, instance_uid: str) -> tuple[np.ndarray, tuple[float, float]]:
    """An annotated slice's pixels (float32) and (row, column) spacing in mm; the one reader of both data sets."""
    _, pixels, spacing = read_slice(path, instance_uid)
    return pixels, spacing


def read_slice(path: Path | None, instance_uid: str) -> tuple[pydicom.Dataset, np.ndarray, tuple[float, float]]:
    """load_slice with the data set itself (its orientation, for evaluation), from one read of the file."""
    if path is None:
        raise FileNotFoundError(f"no image for instance {instance_uid}")
    ds = read_file(path)
    return ds, grey_frame(ds), pixel_spacing(ds)


def pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    sp = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [1.0, 1.0]
    return float(sp[0]), float(sp[1])


def parse_labels(tag: dict, kind: str) -> list[str]:
    """Labels of one annotated point for its kind, sorted and de-duplicated ('v5,v2' -> ['v2','v5'])."""
    raw = tag.get(kind) or ""
    labels = sorted({part.strip() for part in raw.split(",") if part.strip()})
    return labels


def load_annotations(annotation_file: Path, by_uid: dict[str, Path], require_images: bool = True) -> list[Study]:
    """Studies of one annotation JSON; images looked up by SOP Instance UID (`index_instances`). Without
    require_images a study whose image is missing keeps path None (evaluation scores it as unanswered; training
    must not silently lose a study)."""
    studies: list[Study] = []
    for entry in json.loads(annotation_file.read_text()):
        data = _annotated_instance(entry["data"], by_uid)
        path = by_uid.get(data["instanceUid"])
        if path is None and require_images:
            raise FileNotFoundError(f"no image for instance {data['instanceUid']} beside {annotation_file}")
        study = Study(entry["studyUid"], data["seriesUid"], data["instanceUid"], path)
        for raw in _points(data):
            level = raw["tag"].get("identification", "")
            if level not in LEVEL_INDEX:
                continue
            x, y = raw["coord"]
            study.points[level] = Point(level, float(x), float(y), parse_labels(raw["tag"], level_kind(level)))
        studies.append(study)
    return studies


def _points(data: dict) -> list[dict]:
    annotations = data.get("annotation") or [{}]
    return (annotations[0].get("data") or {}).get("point") or []


def _annotated_instance(items: list[dict], by_uid: dict[str, Path]) -> dict:
    """The one instance of a study that is scored: the challenge's files name one, but a study listing several
    (another series, an empty entry) is scored on the first with points whose image is here, not on whichever
    came first."""
    with_points = [d for d in items if _points(d)] or items
    return next((d for d in with_points if d["instanceUid"] in by_uid), with_points[0])


def index_instances(root: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, reading headers only. Any file name (a PACS export often has no extension);
    files that are not DICOM (a DICOMDIR's neighbours, READMEs, the annotation itself) are passed over."""
    index: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = read_file(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM, or unreadable: not an image of this dataset
            continue
        if "SOPInstanceUID" in ds:
            index.setdefault(str(ds.SOPInstanceUID), path)
    return index


def find_annotations(data: Path) -> list[Path]:
    """Every *_annotation.json in the folder (the challenge ships train150 and train51 side by side: scoring only
    the first would quietly test a subset), or the annotation file itself."""
    data = Path(data)
    found = [data] if data.is_file() else sorted(data.glob("*_annotation.json"))
    if not found:
        raise FileNotFoundError(f"no *_annotation.json in {data}")
    return found


def load_dataset(data: Path, require_images: bool = True) -> list[Study]:
    """All annotated studies of a dataset folder (or of one annotation file); images under its `images` folder
    when there is one, else anywhere beside the annotation."""
    studies: list[Study] = []
    indexes: dict[Path, dict[str, Path]] = {}  # annotation files side by side share one scan of their images
    for ann in find_annotations(data):
        root = ann.parent / "images" if (ann.parent / "images").is_dir() else ann.parent
        if root not in indexes:
            indexes[root] = index_instances(root)
        studies += load_annotations(ann, indexes[root], require_images)
    return studies


def target_array(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """(11, 2) xy array and (11,) presence mask in LEVELS order."""
    xy = np.zeros((len(LEVELS), 2), np.float32)
    mask = np.zeros(len(LEVELS), bool)
    for level, p in study.points.items():
        i = LEVEL_INDEX[level]
        xy[i] = (p.x, p.y)
        mask[i] = True
    return xy, mask


@dataclass
class Item:
    """A study as the trainers see it: the slice normalised and letterboxed, its points as arrays."""

    study: Study
    img01: np.ndarray  # normalised full-resolution slice
    spacing: tuple[float, float]
    net_in: torch.Tensor  # (1, S, S) letterboxed
    box: Letterbox
    xy: np.ndarray  # (11, 2) slice pixels
    mask: np.ndarray  # (11,) present


def prepare(studies: list[Study], input_size: int = INPUT_SIZE) -> list[Item]:
    items = []
    for s in studies:
        pixels, spacing = s.load()
        img = normalise(pixels)
        box = Letterbox.fit(img.shape[0], img.shape[1], input_size)
        xy, mask = target_array(s)
        items.append(Item(s, img, spacing, letterbox_tensor(img, box, input_size), box, xy, mask))
    return items
