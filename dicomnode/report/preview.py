"""A preview PNG of the analysed slice with the marks drawn in, for the README, e-mails and viewers that show
neither GSPS nor SR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ai.imaging import normalise
from ai.results import LevelResult, numbering_uncertain
from dicomnode.report.gsps import label_text, outline


def render(pixels: np.ndarray, levels: list[LevelResult], upscale: bool = True) -> Image.Image:
    """upscale=False keeps the slice's own matrix (for the burned-in DICOM copy)."""
    img = Image.fromarray((normalise(pixels) * 255).astype(np.uint8)).convert("RGB")
    scale = max(1, 768 // max(img.size)) if upscale else 1
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    shapes = outline(levels)
    for lv in levels:
        x, y = float(lv.x * scale), float(lv.y * scale)
        if lv.outlined:
            pts = shapes[lv.level] * scale
            rx = float(np.linalg.norm(pts[1] - pts[0])) / 2
            ry = float(np.linalg.norm(pts[3] - pts[2])) / 2
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], outline=(255, 80, 40), width=2)
            draw.text((x + rx + 4, y - 6), label_text(lv), fill=(255, 120, 60))
        else:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(60, 220, 90))
            draw.text((x + 8, y - 6), lv.level, fill=(120, 230, 140))
    return img


def captioned(pixels: np.ndarray, levels: list[LevelResult]) -> Image.Image:
    """The preview as `analyze --png` and the web page show it: the marks, "research use only", and a warning when
    the landmark nets disagree on the numbering."""
    img = render(pixels, levels)
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), "RESEARCH USE ONLY", fill=(255, 255, 0))
    if numbering_uncertain(levels):
        draw.text((6, 18), "NUMBERING UNCERTAIN: check L1-L5 by counting", fill=(255, 90, 90))
    return img


def write_png(path: Path, pixels: np.ndarray, levels: list[LevelResult]) -> Path:
    captioned(pixels, levels).save(path)
    return path
