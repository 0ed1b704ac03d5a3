"""Comprehensive SR, TID 1500 Imaging Measurement Report: one Planar ROI group per level."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai.labels import describe
from ai.results import LevelResult, numbering_uncertain
from dicomnode.report import codes as C
from dicomnode.report.common import (
    ALGORITHM_NAME,
    MANUFACTURER,
    MODEL_NAME,
    SERIES,
    OutputIds,
    carry_patient_context,
    character_set,
    contributing_equipment,
    frame_view,
)
from dicomnode.report.source import library_view, prune_library


def build_sr(
    source: Dataset, levels: list[LevelResult], model_version: str, ids: OutputIds, frame: int | None = None
) -> Dataset:
    """source: the header as `report.source.for_outputs` repairs it. frame: the analysed frame of a multi-frame
    source (1-based); every region references it."""
    algorithm = AlgorithmIdentification(name=ALGORITHM_NAME, version=model_version, manufacturer=MANUFACTURER)
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=_device_uid(), name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    groups = []
    caveat = " [level numbering uncertain]" if numbering_uncertain(levels) else ""
    for lv in levels:
        region = ImageRegion(
            graphic_type=GraphicTypeValues.POINT,
            graphic_data=np.array([[lv.x, lv.y]]),
            source_image=SourceImageForRegion.from_source_image(
                source, referenced_frame_numbers=[frame] if frame else None
            ),
        )
        evaluations = [QualitativeEvaluation(C.FINDING[(lv.kind, label)], C.PRESENT) for label in lv.labels]
        measurements = [
            Measurement(C.CONFIDENCE, round(float(lv.confidence), 4), C.UNITLESS, algorithm_id=algorithm),
            Measurement(C.LOCALISATION, round(float(lv.localisation), 4), C.UNITLESS, algorithm_id=algorithm),
        ]
        if lv.pfirrmann in C.PFIRRMANN:
            evaluations.append(QualitativeEvaluation(C.PFIRRMANN_GRADE, C.PFIRRMANN[lv.pfirrmann]))
            measurements.append(
                Measurement(
                    C.PFIRRMANN_CONFIDENCE,
                    round(float(lv.pfirrmann_confidence or 0.0), 4),
                    C.UNITLESS,
                    algorithm_id=algorithm,
                )
            )
        if lv.stenosis:
            evaluations.append(QualitativeEvaluation(C.STENOSIS, C.PRESENT))
        if lv.findings and "stenosis" in lv.findings:
            measurements.append(
                Measurement(
                    C.STENOSIS_PROBABILITY, round(float(lv.findings["stenosis"]), 4), C.UNITLESS, algorithm_id=algorithm
                )
            )
        text = describe(lv.level, lv.labels, lv.pfirrmann, lv.stenosis) + caveat
        groups.append(
            PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=text),
                referenced_region=region,
                algorithm_id=algorithm,
                finding_sites=[FindingSite(C.LEVEL_SITE[lv.level])],
                measurements=measurements,
                qualitative_evaluations=evaluations,
            )
        )
    library, stand_ins = library_view(frame_view(source, frame))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=C.PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=[library],
    )
    prune_library(report, stand_ins)  # geometry the source lacks is left out, not invented
    description = SERIES["sr"][1]
    sr = ComprehensiveSR(
        evidence=[source],
        content=report,
        **ids.identity("sr"),
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=contributing_equipment(model_version),
        specific_character_set=character_set(source),
    )
    sr.SeriesDescription = description
    sr.CodingSchemeIdentificationSequence = C.coding_scheme_identification()
    carry_patient_context(sr, source)
    return sr


def _device_uid() -> str:
    return generate_uid(entropy_srcs=[ALGORITHM_NAME, "device"])
