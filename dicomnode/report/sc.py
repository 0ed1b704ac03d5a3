"""Secondary Capture with the marks burned in, for PACS viewers that show neither GSPS nor SR (off by default)."""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset

from ai.results import LevelResult
from dicomnode.report.common import (
    SERIES,
    OutputIds,
    carry_patient_context,
    character_set,
    contributing_equipment,
)
from dicomnode.report.preview import render


def build_sc(
    source: Dataset, pixels: np.ndarray, levels: list[LevelResult], model_version: str, ids: OutputIds
) -> Dataset:
    rgb = np.asarray(render(pixels, levels, upscale=False))
    description = SERIES["sc"][1]
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        **ids.identity("sc"),
        # highdicom 0.28.2 annotates this argument tuple[int, int] (its constructor: tuple[float, float]); millimetres
        pixel_spacing=(float(source.PixelSpacing[0]), float(source.PixelSpacing[1]))  # type: ignore[arg-type]
        if len(source.get("PixelSpacing") or []) == 2
        else None,
        patient_orientation=("A", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=contributing_equipment(model_version),
        specific_character_set=character_set(source),
    )
    sc.SeriesDescription = description
    sc.ImageComments = "AI marks burned in; not verified by a physician; not for primary diagnosis"
    sc.BurnedInAnnotation = "YES"
    carry_patient_context(sc, source)
    return sc
