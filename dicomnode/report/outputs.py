"""Stage 5, report: the analysis as DICOM objects (SR, GSPS, optional SC) and an optional preview PNG."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pydicom.dataset import Dataset

from dicomnode.analyse import Analysis
from dicomnode.config import OutputConfig
from dicomnode.report.common import OutputIds
from dicomnode.report.gsps import build_gsps, window_of
from dicomnode.report.preview import write_png
from dicomnode.report.sc import build_sc
from dicomnode.report.sr import build_sr


class Output(NamedTuple):
    """A written result; the UIDs come from the object as built, so nothing reads the file back for them."""

    path: Path
    kind: str  # "sr", "gsps", "sc" or "png"
    sop_class_uid: str | None  # None for the PNG
    sop_instance_uid: str | None

    @property
    def is_dicom(self) -> bool:
        return self.sop_instance_uid is not None


def write_outputs(
    analysis: Analysis, out_dir: Path, revision: int, output: OutputConfig, png: bool = False
) -> list[Output]:
    """SR and GSPS (as configured) and an optional preview PNG; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = OutputIds(str(analysis.source.StudyInstanceUID), revision)
    source = analysis.header
    written = []
    if output.sr:
        sr = build_sr(source, analysis.levels, analysis.model_version, ids, analysis.frame)
        written.append(_save(sr, out_dir / "sr.dcm"))
    if output.gsps:
        pr = build_gsps(
            source,
            analysis.levels,
            analysis.model_version,
            ids,
            output.show_normal_levels,
            analysis.frame,
            window_of(analysis.pixels),
        )
        written.append(_save(pr, out_dir / "gsps.dcm"))
    if output.secondary_capture:
        sc = build_sc(source, analysis.pixels, analysis.levels, analysis.model_version, ids)
        written.append(_save(sc, out_dir / "sc.dcm"))
    if png:
        written.append(Output(write_png(out_dir / "preview.png", analysis.pixels, analysis.levels), "png", None, None))
    return written


def _save(ds: Dataset, path: Path) -> Output:
    ds.save_as(path, enforce_file_format=True)
    return Output(path, path.stem, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
