"""The receive path's hand-written File Meta Information is pydicom's, byte for byte, for any UIDs and AE title."""

from __future__ import annotations

import io

import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.filemeta import file_meta, pydicom_file_meta

UID = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,12}", fullmatch=True).filter(lambda u: len(u) <= 64)
SYNTAX = st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"])
AE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ", max_size=16)


@settings(max_examples=300, deadline=None)
@given(UID, UID, SYNTAX, AE)
def test_file_meta_bytes_equal_pydicoms(sop_class: str, sop_instance: str, syntax: str, ae: str):
    ours = file_meta(sop_class, sop_instance, syntax, ae)
    assert ours == pydicom_file_meta(sop_class, sop_instance, syntax, ae)
    read = pydicom.dcmread(io.BytesIO(ours)).file_meta  # a file of only its meta group reads as one
    assert (read.MediaStorageSOPInstanceUID, read.TransferSyntaxUID) == (sop_instance, syntax)
    assert read.get("SourceApplicationEntityTitle", "") == ae.strip()
