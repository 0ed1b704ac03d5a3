"""Per-association limits: idle time and PDU size, checked on the wire."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from dicomgen import SeriesSpec, write_series
from peers import echo_ok, storescu, successes
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = [pytest.mark.peers, pytest.mark.security]


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the node closes `sock` (reads until EOF or reset)."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_idle_associations_and_silent_connections_are_closed(node_factory):
    node = node_factory(node={"network_timeout": 2}).start()
    silent = socket.create_connection(("127.0.0.1", node.port))
    assert closed_after(silent, 20) < 6  # never sent an A-ASSOCIATE-RQ
    silent.close()

    ae = AE("IDLER")
    ae.add_requested_context(Verification)
    ae.network_timeout = 60  # our side would wait; the node must not
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    t0 = time.monotonic()
    while assoc.is_alive() and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    assert not assoc.is_established and time.monotonic() - t0 < 6
    time.sleep(0.5)
    rows = [e for e in node.log_lines() if e.get("event") == "association closed" and e.get("calling_ae") == "IDLER"]
    assert rows and rows[-1]["outcome"] == "aborted"
    assert echo_ok(node.port)


def test_pdu_size_is_negotiated_and_enforced(node_factory, tmp_path):
    node = node_factory(node={"max_pdu_size": 16384}).start()
    ae = AE("PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established and assoc.acceptor.maximum_length == 16384
    # A peer that ignores the negotiated maximum: a P-DATA-TF announcing 200 MB, then data.
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 200_000_000) + b"\0" * 1_000_000)
    t0 = time.monotonic()
    while assoc.is_alive() and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not assoc.is_established

    # Same before association: an A-ASSOCIATE-RQ announcing 200 MB is cut off, not buffered.
    before = node.memory_bytes()
    s = socket.create_connection(("127.0.0.1", node.port))
    s.sendall(struct.pack(">BBL", 0x01, 0, 200_000_000))
    try:
        for _ in range(50):
            s.sendall(b"\0" * 1_000_000)
    except OSError:
        pass  # the node closed the connection: what we want
    assert closed_after(s, 10) < 10
    s.close()
    assert node.memory_bytes() - before < 50_000_000  # far below the 50 MB sent

    # Well-behaved peers fragment to the negotiated size and are stored as usual.
    files = write_series(tmp_path / "in", SeriesSpec(slices=3, rows=256, cols=256), generate_uid())
    r = storescu(node.port, files)
    assert successes(r.stdout + r.stderr) == 3
    assert echo_ok(node.port)


def test_an_association_request_announced_too_long_frees_its_slot_at_once(node_factory):
    """Before the fix the association thread waited acse_timeout (30 s) for a request that would never come,
    holding one of `max_associations` meanwhile."""
    node = node_factory(node={"max_pdu_size": 16384, "max_associations": 1}).start()
    s = socket.create_connection(("127.0.0.1", node.port))
    s.sendall(struct.pack(">BBL", 0x01, 0, 200_000_000))
    assert closed_after(s, 10) < 5
    s.close()
    deadline = time.monotonic() + 3
    while not echo_ok(node.port):  # the only slot is free again
        assert time.monotonic() < deadline, "the refused connection still holds the association slot"
        time.sleep(0.2)
    warned = [e for e in node.log_lines() if e.get("event") == "pdu too long"]
    assert warned and warned[0]["announced"] == 200_000_000 and warned[0]["limit"] > 16384
