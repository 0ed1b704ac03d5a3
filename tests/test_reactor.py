"""pynetdicom without polling (dicomnode.reactor): associations still work both ways, and idle ones do not spin."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from dicomgen import SeriesSpec, write_series
from peers import free_port, storescu, successes
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicomnode import reactor
from dicomnode.config import Config
from dicomnode.receive import StoreSCP
from dicomnode.scu import VERIFICATION
from storage import db
from storage.filestore import FileStore

pytestmark = pytest.mark.peers


@pytest.fixture
def scp(tmp_path: Path):
    cfg = Config()
    cfg.node.data_dir, cfg.node.host, cfg.node.port = str(tmp_path / "var"), "127.0.0.1", free_port()
    engine = db.open_db(cfg.data_path / "dicomnode.db")
    server = StoreSCP(cfg, engine, FileStore(cfg.data_path, fsync=False))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def count_waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"dul": 0, "association": 0}
    dul_wait, assoc_wait = reactor._wait_in_dul, reactor._wait_in_association

    def in_dul(dul, seconds):
        counts["dul"] += 1
        dul_wait(dul, seconds)

    def in_assoc(assoc, seconds):
        counts["association"] += 1
        assoc_wait(assoc, seconds)

    monkeypatch.setattr(reactor, "_wait_in_dul", in_dul)
    monkeypatch.setattr(reactor, "_wait_in_association", in_assoc)
    return counts


def test_an_idle_association_sleeps_instead_of_polling(scp, monkeypatch):
    """pynetdicom's own loops wake 1,000 times a second each; here each waits up to MAX_WAIT unless woken."""
    counts = count_waits(monkeypatch)
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", scp.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        time.sleep(0.3)  # settle: the association's first exchanges are over
        before = dict(counts)
        time.sleep(1.0)
        woke = {k: counts[k] - before[k] for k in counts}
        assert 0 < woke["dul"] <= 4 / reactor.MAX_WAIT, woke  # both sides' DUL threads live in this process
        assert 0 < woke["association"] <= 4 / reactor.MAX_WAIT, woke
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert not assoc.is_established


def test_stores_from_dcmtk_and_from_pynetdicom_through_the_waiting_loops(scp, tmp_path):
    files = write_series(tmp_path / "in", SeriesSpec(slices=30), generate_uid())
    r = storescu(scp.cfg.node.port, files)
    assert successes(r.stdout + r.stderr) == 30, r.stdout[-1500:] + r.stderr[-1500:]

    ae = AE(ae_title="PYSCU")  # pynetdicom as the requestor: its send_c_store pauses the reactor
    ds = pydicom.dcmread(write_series(tmp_path / "more", SeriesSpec(slices=1), generate_uid())[0])
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    statuses = []
    for k in range(20):
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        statuses.append(assoc.send_c_store(ds).Status)
    assoc.release()
    assert statuses == [0] * 20
    with scp.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from instances").scalar() == 50


def test_eight_associations_at_once_all_acknowledged(scp, tmp_path):
    folders = [write_series(tmp_path / f"s{k}", SeriesSpec(slices=15), generate_uid()) for k in range(8)]
    results: list[int] = []

    def send(files):
        r = storescu(scp.cfg.node.port, files)
        results.append(successes(r.stdout + r.stderr))

    threads = [threading.Thread(target=send, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [15] * 8
    with scp.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from instances").scalar() == 120


def test_a_second_queued_message_is_served_without_waiting():
    """The association loop serves one DIMSE message a turn: with another already queued it must not sleep, else
    every second message of a burst would wait for the timeout."""
    import queue
    import types

    waits: list[float | None] = []

    class Event:
        def wait(self, timeout=None):
            waits.append(timeout)
            return False

        def clear(self):
            pass

    assoc = types.SimpleNamespace(_dn_event=Event(), dimse=types.SimpleNamespace(msg_queue=queue.Queue()))
    assoc.dimse.msg_queue.put((1, "message"))
    reactor._wait_in_association(assoc, 0.001)
    assert waits == []
    assoc.dimse.msg_queue.get()
    reactor._wait_in_association(assoc, 0.001)
    assert waits == [reactor.MAX_WAIT]


def test_ready_answers_for_a_socket_numbered_above_1024():
    """pynetdicom's `ready` uses select, which refuses descriptors numbered 1,024 and above: in a busy node such an
    association failed (Evt17). The replacement polls."""
    import os
    import queue
    import resource
    import select
    import socket
    import types

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"descriptor limit {hard} is below 1,600")
    if soft != resource.RLIM_INFINITY and soft < 1600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1600, hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(b.fileno(), 1500))
    try:
        with pytest.raises(ValueError):
            select.select([high], [], [], 0)
        wrapped = types.SimpleNamespace(socket=high, _is_connected=True, event_queue=queue.Queue())
        assert reactor._ready(wrapped) is False
        a.send(b"x")
        assert reactor._ready(wrapped) is True
        assert wrapped.event_queue.empty()
    finally:
        for sock in (a, b, high):
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_pdu_is_read_whole_through_a_buffer_that_grows_from_a_small_first_read(monkeypatch):
    """The buffer is reserved up to FIRST_READ, not to the length a header claims, and grows as bytes arrive."""
    import socket
    import types

    from dicomnode import receive

    monkeypatch.setattr(receive, "FIRST_READ", 16)
    monkeypatch.setattr(receive, "_pdu_limit", 0)
    a, b = socket.socketpair()
    fake = types.SimpleNamespace(socket=b, assoc=types.SimpleNamespace(is_acceptor=True))
    payload = bytes(range(256)) * 4

    def send_in_pieces(data: bytes) -> None:
        for k in range(0, len(data), 100):
            a.sendall(data[k : k + 100])
            time.sleep(0.005)

    try:
        sender = threading.Thread(target=send_in_pieces, args=(payload,))
        sender.start()
        assert bytes(receive._bounded_recv(fake, len(payload))) == payload
        sender.join()
        a.sendall(payload[:300])
        a.shutdown(socket.SHUT_WR)
        assert bytes(receive._bounded_recv(fake, len(payload))) == payload[:300]  # short: the peer closed
    finally:
        a.close()
        b.close()
