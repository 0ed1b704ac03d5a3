"""File Meta Information (group 0002) encoded directly: on the receive path building it through pydicom's
FileMetaDataset and writer costs about 0.2 ms an instance, more CPU than the rest of our C-STORE handler (yappi),
this about 2 µs (`benchmarks/filemeta.py`). The bytes are pydicom's own, byte for byte (tests/test_filemeta.py);
`pydicom_file_meta` is that reference."""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION


def _pad(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _short(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group in explicit VR little endian."""
    body = b"".join(
        [
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short(0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
            _short(0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
            _short(0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
            _short(0x0012, b"UI", _pad(str(PYNETDICOM_IMPLEMENTATION_UID), b"\x00")),
            _short(0x0013, b"SH", _pad(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            _short(0x0016, b"AE", _pad(source_ae.strip(), b" ")) if source_ae.strip() else b"",
        ]
    )
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def pydicom_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """The same bytes through pydicom's FileMetaDataset and writer: the reference for the test and the benchmark."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if source_ae.strip():
        meta.SourceApplicationEntityTitle = source_ae.strip()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return bytes(fp.getvalue())
