"""The floor of the node's receive path: pynetdicom set up as the node sets it up (its reactor, bounded PDU reads,
unrestricted storage, 128 KiB PDUs) with a C-STORE handler that keeps nothing. What it cannot beat, no store
behind it can. Used by `load.py --compare`; prints "ready" once listening.

    .venv/bin/python benchmarks/bare_scp.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt  # noqa: E402

from dicomnode import reactor, receive  # noqa: E402  (importing receive allows every storage class, as in the node)
from dicomnode.scu import VERIFICATION  # noqa: E402


def main() -> None:
    reactor.install()
    receive.limit_received_pdus(131072)
    ae = AE(ae_title="DICOMNODE")
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES[:4])
    ae.maximum_pdu_size = 131072
    ae.maximum_associations = 32

    def keep_nothing(event: Any) -> int:
        return 0x0000

    handlers: list[Any] = [(evt.EVT_C_STORE, keep_nothing)]
    server = ae.start_server(("127.0.0.1", int(sys.argv[1])), block=False, evt_handlers=handlers)
    assert server is not None
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes our stdin or stops us
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
