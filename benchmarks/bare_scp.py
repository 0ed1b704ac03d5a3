"""The floor of the node's receive path: pynetdicom set up as the node sets it up (its reactor, bounded PDU reads,
unrestricted storage, 128 KiB PDUs) with a C-STORE handler that keeps nothing, or (with a folder) only writes each
dataset with the node's durable FileStore (temp file, fsync, rename, folder fsync) — no header parsing, no index.
What these cannot beat, the node cannot. Used by `load.py --compare`; prints "ready" once listening.

    .venv/bin/python benchmarks/bare_scp.py PORT [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt  # noqa: E402

from dicomnode import reactor, receive  # noqa: E402  (importing receive allows every storage class, as in the node)
from dicomnode.scu import VERIFICATION  # noqa: E402
from storage.filestore import FileStore  # noqa: E402


def main() -> None:
    reactor.install()
    receive.limit_received_pdus(131072)
    ae = AE(ae_title="DICOMNODE")
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES[:4])
    ae.maximum_pdu_size = 131072
    ae.maximum_associations = 32

    store = FileStore(Path(sys.argv[2]), fsync=True) if len(sys.argv) > 2 else None

    def on_store(event: Any) -> int:
        if store is not None:
            uid = str(event.request.AffectedSOPInstanceUID)
            store.write(store.studies / f"{uid}.dcm", event.request.DataSet.getbuffer())
        return 0x0000

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", int(sys.argv[1])), block=False, evt_handlers=handlers)
    assert server is not None
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes our stdin or stops us
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
