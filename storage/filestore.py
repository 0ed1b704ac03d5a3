"""The file store: one folder per study and series, files written durably, names never trusted blindly.

A file becomes visible only by an atomic rename after fsync, so a crash leaves either the whole file or a
`tmp/` leftover that start-up removes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_part(uid: str) -> str:
    """A UID as a path fragment: itself when it is a well-formed UID, else a hash (no '/', '..', NUL...)."""
    uid = uid.strip().rstrip("\x00")
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "h" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


class FileStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.studies = root / "studies"
        self.results = root / "results"  # results/<job id>: the SR, GSPS (and SC) a job wrote and sends
        self.tmp = root / "tmp"
        self.fsync = fsync
        self.studies.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._free_checked = 0.0
        self._free = 0

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.studies / safe_part(study_uid) / safe_part(series_uid) / f"{safe_part(sop_uid)}.dcm"

    def write(self, dest: Path, data: bytes | memoryview | list[bytes | memoryview]) -> None:
        """Write durably: temp file in the same file system, fsync, atomic rename, fsync the folder.
        `data` may be a list of buffers, written in order without joining them."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{os.getpid()}-{id(data)}-{time.monotonic_ns()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for part in data if isinstance(data, list) else [data]:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        if self.fsync:
            dfd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def clean_tmp(self, min_age: float = 0.0) -> int:
        """Remove leftovers of writes a crash interrupted (they were never acknowledged); min_age: only those older
        than this, when other processes may be writing into the same store."""
        n = 0
        cutoff = time.time() - min_age
        for p in self.tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if min_age and p.stat().st_mtime > cutoff:
                    continue
                p.unlink()
                n += 1
        return n

    def free_bytes(self, max_age: float = 1.0) -> int:
        now = time.monotonic()
        if now - self._free_checked > max_age:
            self._free = shutil.disk_usage(self.root).free
            self._free_checked = now
        return self._free

    def iter_files(self) -> Iterator[Path]:
        yield from self.studies.rglob("*.dcm")

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.studies / safe_part(study_uid), ignore_errors=True)


HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
_PEEK = 64 * 1024


def read_uids(body: bytes | memoryview, transfer_syntax: str) -> tuple[str, str]:
    """Study and Series Instance UID from an encoded dataset (no file meta), reading only up to (0020,000E):
    a third of dcmread's cost on the receive path. Raises ValueError for anything unreadable."""
    ts = UID(transfer_syntax)
    known = ts.is_transfer_syntax
    deflated = known and ts.is_deflated
    explicit_le = not known or ts.is_compressed  # encapsulated and private syntaxes: explicit VR little endian

    def parse(buf: bytes) -> Dataset:
        return read_dataset(
            BytesIO(buf),
            False if explicit_le else ts.is_implicit_VR,
            True if explicit_le else ts.is_little_endian,
            stop_when=lambda tag, vr, length: tag > 0x0020000E,
            specific_tags=[0x0020000D, 0x0020000E],
        )

    try:
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(body), _PEEK) if deflated else bytes(body[:_PEEK])
        try:
            ds = parse(head)
        except Exception:  # noqa: BLE001 - a header longer than the peek: read it all
            ds = parse(zlib.decompress(bytes(body), -zlib.MAX_WBITS) if deflated else bytes(body))
        return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    except Exception as exc:  # noqa: BLE001 - one error type for the caller, whatever broke inside pydicom/zlib
        raise ValueError(f"unreadable dataset header: {type(exc).__name__}") from None


def read_header(data: bytes | Path) -> pydicom.Dataset:
    """The UIDs we index by, without touching pixel data."""
    src = BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return pydicom.dcmread(src, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=True)


def reconcile(store: FileStore, engine: Engine, min_age: float = 0.0) -> dict[str, int]:
    """Bring the index in line with the files: index files a crash left unindexed; report rows whose file
    is gone. Runs at start, before the SCP accepts anything. min_age: in a deployment whose other receivers write
    into the same store now, only files (and leftovers) older than this are touched, so that a write in flight is
    neither deleted nor counted twice."""
    from sqlalchemy import select

    from storage import db

    removed_tmp = store.clean_tmp(min_age)
    cutoff = time.time() - min_age
    with engine.connect() as conn:
        known = {p for (p,) in conn.execute(select(db.instances.c.path))}
    added = 0
    for path in store.iter_files():
        rel = str(path.relative_to(store.root))
        if rel in known:
            known.discard(rel)
            continue
        if min_age and path.stat().st_mtime > cutoff:
            continue
        try:
            hdr = read_header(path)
            row = {
                "sop_instance_uid": str(hdr.SOPInstanceUID),
                "sop_class_uid": str(hdr.SOPClassUID),
                "study_uid": str(hdr.StudyInstanceUID),
                "series_uid": str(hdr.SeriesInstanceUID),
                "transfer_syntax": str(hdr.file_meta.TransferSyntaxUID),
                "path": rel,
                "size": path.stat().st_size,
                "received_at": path.stat().st_mtime,
                "association_id": None,
            }
        except Exception:  # noqa: BLE001 - an unreadable leftover is moved aside, not fatal
            path.rename(path.with_suffix(".unreadable"))
            continue
        raw = db.connect_raw(engine)
        try:
            db.record_instance(raw, row)
        finally:
            raw.close()
        added += 1
    return {"tmp_removed": removed_tmp, "indexed": added, "missing_files": len(known)}
