"""Microseconds per instance to encode the File Meta Information on the receive path: the node's encoder
(`storage.filemeta.file_meta`) against pydicom's FileMetaDataset and writer, same bytes (tests/test_filemeta.py).

    .venv/bin/python benchmarks/filemeta.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.filemeta import file_meta, pydicom_file_meta  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    n = p.parse_args().n
    args = (
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.826.0.1.3680043.8.498.12345678901234567890",
        "1.2.840.10008.1.2.1",
        "PACS",
    )
    assert file_meta(*args) == pydicom_file_meta(*args)
    ours = min(timeit.repeat(lambda: file_meta(*args), number=n, repeat=3)) / n
    lib = min(timeit.repeat(lambda: pydicom_file_meta(*args), number=n, repeat=3)) / n
    print(
        json.dumps(
            {
                "file_meta_us": round(ours * 1e6, 2),
                "pydicom_file_meta_us": round(lib * 1e6, 2),
                "ratio": round(lib / ours, 1),
                "n": n,
            }
        )
    )


if __name__ == "__main__":
    main()
