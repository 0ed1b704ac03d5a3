"""Grayscale Softcopy Presentation State: abnormal discs outlined with a label, normal levels small."""

from __future__ import annotations

import numpy as np
from highdicom import PresentationLUTTransformation
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom.dataset import Dataset

from ai.imaging import spine_geometry
from ai.labels import describe
from ai.results import LevelResult, numbering_uncertain
from dicomnode import __version__
from dicomnode.report.common import (
    MODEL_NAME,
    SERIES,
    OutputIds,
    caret_name,
    carry_patient_context,
    character_set,
    contributing_equipment,
)

ABNORMAL_COLOUR = CIELabColor(55.0, 75.0, 60.0)  # red-orange
NORMAL_COLOUR = CIELabColor(85.0, -60.0, 60.0)  # green
WARNING_TEXT = "AI: level numbering uncertain (check L1-L5 by counting)"


def outline(levels: list[LevelResult]) -> dict[str, np.ndarray]:
    """Per level an ellipse (4 points: major axis ends, minor axis ends) sized from the neighbouring levels
    and turned along the spine: discs wide and flat, vertebrae taller."""
    xy = np.array([[lv.x, lv.y] for lv in levels], float)
    axis, spacing = spine_geometry(xy.astype(np.float32))
    out = {}
    for i, lv in enumerate(levels):
        down = axis[i]
        across = np.array([-down[1], down[0]])
        half_w = spacing[i] * (1.6 if lv.kind == "disc" else 1.4)
        half_h = spacing[i] * (0.45 if lv.kind == "disc" else 0.8)
        c = xy[i]
        out[lv.level] = np.array([c - across * half_w, c + across * half_w, c - down * half_h, c + down * half_h])
    return out


def label_text(lv: LevelResult) -> str:
    """'L4-L5: protrusion, Pfirrmann IV': what a reader sees beside the outline."""
    return describe(lv.level, lv.labels, lv.pfirrmann, lv.stenosis)


def polarity(source: Dataset) -> PresentationLUTTransformation:
    """A presentation state overrides the image's own polarity: a MONOCHROME1 image (low value shown bright)
    needs INVERSE, or a viewer applying our GSPS would show it as a negative."""
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    return PresentationLUTTransformation(presentation_lut_shape="INVERSE" if inverse else "IDENTITY")


def window_of(pixels: np.ndarray) -> tuple[float, float]:
    """(centre, width) spanning the slice's 0.5-99.5 percentiles: what a reader needs when the image names none."""
    lo, hi = (float(v) for v in np.percentile(pixels, (0.5, 99.5)))
    return (lo + hi) / 2, max(hi - lo, 1.0)


def _names_a_window(source: Dataset) -> bool:
    """Whether highdicom can copy the image's own window: a multi-frame image must give one in its functional
    groups (a legacy conversion of images without one leaves an empty Frame VOI LUT item there)."""
    if "SharedFunctionalGroupsSequence" not in source:
        return "WindowWidth" in source or "VOILUTSequence" in source  # single-frame: copied when present
    groups = [source.SharedFunctionalGroupsSequence[0], *source.get("PerFrameFunctionalGroupsSequence", [])]
    vois = [g.FrameVOILUTSequence[0] for g in groups if g.get("FrameVOILUTSequence")]
    return bool(vois) and all("WindowCenter" in v and "WindowWidth" in v for v in vois)


def build_gsps(
    source: Dataset,
    levels: list[LevelResult],
    model_version: str,
    ids: OutputIds,
    show_normal: bool = True,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
) -> Dataset:
    """frame: the analysed frame of a multi-frame source (1-based); every annotation is drawn on it only.
    window: (centre, width) to show the slice with when the image names none of its own."""
    rows, cols = int(source.Rows), int(source.Columns)
    clip = lambda p: np.clip(p, [0, 0], [cols - 1, rows - 1])  # noqa: E731
    shapes = outline(levels)
    abnormal_layer = GraphicLayer("ABNORMAL", 1, "Abnormal discs (AI)", ABNORMAL_COLOUR)
    normal_layer = GraphicLayer("LEVELS", 2, "Other levels (AI)", NORMAL_COLOUR)
    abnormal_objs, abnormal_text, normal_objs = [], [], []
    for lv in levels:
        if lv.outlined:
            abnormal_objs.append(
                GraphicObject(
                    GraphicTypeValues.ELLIPSE, clip(shapes[lv.level]).astype(np.float32), AnnotationUnitsValues.PIXEL
                )
            )
            end = shapes[lv.level][1]  # label just beyond one end of the ellipse
            anchor = clip(end + (end - np.array([lv.x, lv.y])) * 0.3)
            abnormal_text.append(
                TextObject(
                    label_text(lv),
                    AnnotationUnitsValues.PIXEL,
                    anchor_point=(float(anchor[0]), float(anchor[1])),
                    anchor_point_visible=False,
                )
            )
        elif show_normal:
            normal_objs.append(
                GraphicObject(
                    GraphicTypeValues.POINT,
                    clip(np.array([[lv.x, lv.y]])).astype(np.float32),
                    AnnotationUnitsValues.PIXEL,
                )
            )
    annotations, layers = [], []
    uncertain = numbering_uncertain(levels)
    if uncertain:  # top left, where a reader looks first
        warning_layer = GraphicLayer("WARNING", 3, "Level numbering uncertain (AI)", ABNORMAL_COLOUR)
        layers.append(warning_layer)
        annotations.append(
            GraphicAnnotation(
                [source],
                warning_layer,
                frame,
                text_objects=[
                    TextObject(
                        WARNING_TEXT,
                        AnnotationUnitsValues.PIXEL,
                        anchor_point=(float(cols * 0.03), float(rows * 0.04)),
                        anchor_point_visible=False,
                    )
                ],
            )
        )
    if abnormal_objs:
        layers.append(abnormal_layer)
        annotations.append(
            GraphicAnnotation(
                [source], abnormal_layer, frame, graphic_objects=abnormal_objs, text_objects=abnormal_text
            )
        )
    if normal_objs:
        layers.append(normal_layer)
        annotations.append(GraphicAnnotation([source], normal_layer, frame, graphic_objects=normal_objs))
    description = SERIES["gsps"][1]
    centre, width = window or (2048.0, 4096.0)  # 12-bit full range when neither the image nor the caller names one
    caveat = "numbering uncertain; unverified" if uncertain else "not physician-verified"
    pr = GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        **ids.identity("gsps"),
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number="0",
        content_label="AI_SPINE",
        content_description=f"AI: {len(abnormal_objs)} abnormal disc(s); {caveat}",
        graphic_annotations=annotations or None,
        graphic_layers=layers or None,
        content_creator_name=caret_name("dicomnode"),
        contributing_equipment=contributing_equipment(model_version),
        voi_lut_transformations=None
        if _names_a_window(source)
        else [SoftcopyVOILUTTransformation(window_center=centre, window_width=width)],
        specific_character_set=character_set(source),
        presentation_lut_transformation=polarity(source),
    )
    pr.SeriesDescription = description
    carry_patient_context(pr, source)
    return pr
