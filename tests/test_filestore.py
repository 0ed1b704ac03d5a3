from pathlib import Path

import pytest

from storage.filestore import FileStore, safe_part


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/../3", "a\x00b", "..", "/abs", "1.2.3\\4", " " * 3])
def test_unsafe_uids_become_hashes_without_separators(uid: str):
    part = safe_part(uid)
    assert part.startswith("h") and "/" not in part and "\\" not in part and ".." not in part


def test_valid_uid_is_kept_readable():
    assert safe_part("1.2.840.10008.5.1.4.1.1.4") == "1.2.840.10008.5.1.4.1.1.4"


def test_paths_stay_inside_the_store(tmp_path: Path):
    store = FileStore(tmp_path)
    p = store.path_for("../../x", "../y", "../../../z")
    assert p.resolve().is_relative_to(store.studies.resolve())


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path):
    store = FileStore(tmp_path)
    dest = store.path_for("1.2", "1.2.3", "1.2.3.4")
    store.write(dest, b"x" * 1000)
    store.write(dest, b"y" * 10)  # same instance again: replaced, one copy
    assert dest.read_bytes() == b"y" * 10
    assert list(store.tmp.iterdir()) == []
    assert len(list(store.iter_files())) == 1


def test_read_uids_in_every_transfer_syntax(tmp_path: Path):
    import pydicom
    from dicomgen import ALL_SYNTAXES, write_in_syntax

    from storage.filestore import read_uids

    for i, ts in enumerate(ALL_SYNTAXES):
        f = write_in_syntax(tmp_path / f"{i}.dcm", ts, "1.2.3.4")
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta_len = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
        body = f.read_bytes()[meta_len:]
        assert read_uids(body, str(ts)) == ("1.2.3.4", str(ds.SeriesInstanceUID)), ts.name


def test_reconcile_indexes_files_without_rows_and_removes_leftovers(tmp_path: Path):
    import pydicom
    from dicomgen import SeriesSpec, write_series
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from storage import db
    from storage.filestore import reconcile

    store = FileStore(tmp_path / "var", fsync=False)
    engine = db.open_db(tmp_path / "var" / "dicomnode.db")
    f = write_series(tmp_path / "src", SeriesSpec(slices=1), generate_uid())[0]
    ds = pydicom.dcmread(f)
    store.write(store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID), f.read_bytes())
    (store.tmp / "123-crashed.part").write_bytes(b"half a file")
    assert reconcile(store, engine) == {"tmp_removed": 1, "indexed": 1, "missing_files": 0}
    with engine.connect() as conn:
        row = conn.execute(select(db.instances)).one()
    assert row.sop_instance_uid == ds.SOPInstanceUID and row.transfer_syntax == "1.2.840.10008.1.2.1"
    assert reconcile(store, engine) == {"tmp_removed": 0, "indexed": 0, "missing_files": 0}
