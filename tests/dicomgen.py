"""Builds DICOM test studies with real-world header variants (no patient data; names are invented), and
subsets of the annotated data."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

ORIENT = {
    "sag": [0, 1, 0, 0, 0, -1],
    "ax": [1, 0, 0, 0, 1, 0],
    "cor": [1, 0, 0, 0, 0, -1],
}


@dataclass
class SeriesSpec:
    description: str | None = "T2_TSE_SAG"
    plane: str = "sag"
    slices: int = 5
    rows: int = 256
    cols: int = 256
    echo_time: float | None = 100.0
    repetition_time: float | None = 3000.0
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NORM")
    reverse: bool = False  # instance numbers run opposite to position
    spacing_mm: float = 4.0
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    series_number: int = 1


def base_dataset(
    study_uid: str, series_uid: str, sop_uid: str, patient_name: str = "Test^Patient", charset: str | None = None
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "for"])
    ds.Modality = "MR"
    ds.PatientName = patient_name
    ds.PatientID = "TEST0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "TestVendor"
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    return ds


def phantom(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A bright vertical band of stacked blocks: enough structure for selection and timing, not anatomy."""
    rng = np.random.default_rng(seed)
    img = rng.normal(200, 20, (rows, cols)).clip(0, 4095)
    for i in range(6):
        y0 = int(rows * (0.1 + i * 0.14))
        img[y0 : y0 + int(rows * 0.1), int(cols * 0.45) : int(cols * 0.62)] = 1800
    return img.astype(np.uint16)


def make_instance(
    spec: SeriesSpec,
    study_uid: str,
    series_uid: str,
    index: int,
    pixels: np.ndarray | None = None,
    patient_name: str = "Test^Patient",
    charset: str | None = None,
) -> Dataset:
    ds = base_dataset(study_uid, series_uid, generate_uid(), patient_name, charset)
    ds.SeriesNumber = spec.series_number
    n = spec.slices
    ds.InstanceNumber = (n - index) if spec.reverse else (index + 1)
    if spec.description is not None:
        ds.SeriesDescription = spec.description
    if spec.echo_time is not None:
        ds.EchoTime = spec.echo_time
    if spec.repetition_time is not None:
        ds.RepetitionTime = spec.repetition_time
    ds.ImageType = list(spec.image_type)
    orient = ORIENT[spec.plane]
    ds.ImageOrientationPatient = orient
    normal = np.cross(orient[:3], orient[3:])
    offset = (index - (n - 1) / 2) * spec.spacing_mm
    ds.ImagePositionPatient = [float(v) for v in (np.array([0.0, -150.0, 150.0]) + normal * offset)]
    ds.SliceLocation = offset
    ds.SliceThickness = spec.spacing_mm
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.ImagesInAcquisition = n
    img = pixels if pixels is not None else phantom(spec.rows, spec.cols, index)
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = img.astype(np.uint16).tobytes()
    return ds


def write_bare(path: Path) -> None:
    """Rewrites a DICOM file as a bare data set (no preamble, no file meta), as older archives export."""
    ds = pydicom.dcmread(path)
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    dcmwrite(path, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)


def write_series(folder: Path, spec: SeriesSpec, study_uid: str, **kw: object) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for i in range(spec.slices):
        ds = make_instance(spec, study_uid, series_uid, i, **kw)  # type: ignore[arg-type]
        p = folder / f"s{spec.series_number}_{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def _jpeg_frame(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((img >> 4).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


ALL_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
]


def write_in_syntax(path: Path, syntax: UID, study_uid: str) -> Path:
    """One MR instance stored in `syntax`. RLE and JPEG-LS are really encoded; for the other compressed
    syntaxes the frame is a JPEG baseline stream under that label: the node stores bytes without decoding,
    so what is tested here is negotiation and byte-exact storage."""
    spec = SeriesSpec(slices=1, rows=64, cols=64)
    ds = make_instance(spec, study_uid, generate_uid(), 0)
    img = ds.pixel_array
    if syntax in (RLELossless, JPEGLSLossless):
        ds.compress(syntax, img, encoding_plugin="pydicom" if syntax == RLELossless else "pyjpegls")
    elif syntax.is_compressed:
        if syntax == JPEGBaseline8Bit:
            ds.BitsStored, ds.HighBit, ds.BitsAllocated = 8, 7, 8
        ds.PixelData = encapsulate([_jpeg_frame(img)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def data_subset(shared_data: Path, folder: Path, n: int) -> Path:
    """The first n annotated studies as a dataset of their own (annotation JSON + the matching images)."""
    ann = json.loads(next(shared_data.glob("*_annotation.json")).read_text())[:n]
    (folder / "images").mkdir(parents=True)
    (folder / "sub_annotation.json").write_text(json.dumps(ann))
    wanted = {entry["data"][0]["instanceUid"] for entry in ann}
    for f in shared_data.glob("images/*/*.dcm"):
        uid = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        if uid in wanted:
            shutil.copy(f, folder / "images" / f"{uid}.dcm")
    return folder


def write_multiframe(
    path: Path, spec: SeriesSpec, study_uid: str, pixels: list[np.ndarray] | None = None, enhanced: bool = False
) -> Path:
    """The series as one Legacy Converted Enhanced MR object, built by highdicom from the single-frame instances
    (plane, position and timing per frame in the functional groups, as a Siemens XA or Philips scanner sends a
    sagittal series); enhanced=True relabels it Enhanced MR Image Storage, the other multi-frame MR class the node
    reads (same functional groups for what the node uses)."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    series_uid = generate_uid()
    singles = [
        make_instance(spec, study_uid, series_uid, i, pixels=None if pixels is None else pixels[i])
        for i in range(spec.slices)
    ]
    for ds in singles:
        ds.StudyID, ds.AccessionNumber = "1", "ACC1"
    mf = LegacyConvertedEnhancedMRImage(singles, series_uid, spec.series_number, generate_uid(), 1)
    if enhanced:
        mf.SOPClassUID = mf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    mf.save_as(path, enforce_file_format=True)
    return path
