"""DICOM TLS both ways with real peers: DCMTK storescu/echoscu and Orthanc, certificates made per run."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import DCMTK_ENV, DICOMNODE, Orthanc, free_port, storescu, successes, write_config
from pki import make_ca, make_leaf
from pydicom.uid import generate_uid
from test_receive import db_rows

from dicomnode.config import load_config
from dicomnode.scu import store
from dicomnode.tls import client_context

pytestmark = [pytest.mark.peers, pytest.mark.security]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "hospital-ca")
    rogue = make_ca(d, "rogue-ca")
    node = make_leaf(d, "node", ca)
    peer = make_leaf(d, "peer", ca)
    intruder = make_leaf(d, "intruder", rogue)
    return {
        "ca": ca[0],
        "node_crt": node[0],
        "node_key": node[1],
        "peer_crt": peer[0],
        "peer_key": peer[1],
        "intruder_crt": intruder[0],
        "intruder_key": intruder[1],
    }


def tls_section(pki: dict[str, Path], port: int, **kw: object) -> dict[str, object]:
    return {
        "port": port,
        "certificate": str(pki["node_crt"]),
        "private_key": str(pki["node_key"]),
        "ca_certificates": str(pki["ca"]),
        **kw,
    }


def stored(node) -> int:
    return db_rows(node, "select count(*) from instances")[0][0]


def test_storescu_over_tls_is_accepted_and_everything_else_is_not(node_factory, pki, tmp_path):
    tls_port = free_port()
    node = node_factory(tls=tls_section(pki, tls_port, plain=False)).start()
    files = write_series(tmp_path / "in", SeriesSpec(slices=3), generate_uid())
    good = ["+tls", str(pki["peer_key"]), str(pki["peer_crt"]), "+cf", str(pki["ca"])]

    r = storescu(tls_port, files, extra=good)
    assert successes(r.stdout + r.stderr) == 3, r.stderr[-2000:]
    assert stored(node) == 3

    # A peer that speaks plain DICOM to the TLS port, one whose certificate another CA signed, and one
    # that presents no certificate at all: none gets an association, nothing is stored.
    more = write_series(tmp_path / "more", SeriesSpec(slices=2), generate_uid())
    for extra in (
        [],
        ["+tls", str(pki["intruder_key"]), str(pki["intruder_crt"]), "+cf", str(pki["ca"])],
        ["+tla", "+cf", str(pki["ca"])],
    ):
        r = storescu(tls_port, more, extra=extra, timeout=60)
        assert successes(r.stdout + r.stderr) == 0, extra
    assert stored(node) == 3
    # plain = false: nothing listens on the plain port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=2).close()

    # A caller that opens the TLS port and says nothing must not hold up everyone else (pynetdicom's own
    # server does the handshake in its accept loop; ours does it per association, with a timeout).
    silent = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    try:
        t0 = time.monotonic()
        r = subprocess.run(
            ["echoscu", *good, "-aec", "DICOMNODE", "127.0.0.1", str(tls_port)],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()
    assert node.proc.poll() is None
    events = [e for e in node.log_lines() if e.get("event") == "tls handshake failed"]
    assert len(events) >= 2  # the rogue certificate and the missing one


def test_orthanc_and_node_talk_tls_both_ways(node_factory, pki, tmp_path):
    tls_port = free_port()
    node = node_factory(tls=tls_section(pki, tls_port))
    orthanc = Orthanc(
        tmp_path / "orthanc",
        modalities={"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": tls_port, "UseDicomTls": True}},
        extra={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki["peer_crt"]),
            "DicomTlsPrivateKey": str(pki["peer_key"]),
            "DicomTlsTrustedCertificates": str(pki["ca"]),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    orthanc.start()
    try:
        node.start()
        # PACS -> node over TLS
        files = write_series(tmp_path / "in", SeriesSpec(slices=4), generate_uid())
        study = orthanc.upload(files)[0]
        orthanc.post("/modalities/node/store", {"Resources": [study], "Synchronous": True})
        assert stored(node) == 4

        # node -> PACS over TLS, with the node's configured certificate (what a job's send uses)
        cfg_path = write_config(
            tmp_path / "send.toml",
            tmp_path / "unused",
            free_port(),
            tls=tls_section(pki, 0),
            destinations=[
                {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom, "tls": True}
            ],
        )
        cfg = load_config(cfg_path)
        out = write_series(tmp_path / "out", SeriesSpec(slices=2, series_number=77), generate_uid())
        results = store(out, "ORTHANC", "127.0.0.1", orthanc.dicom, tls=client_context(cfg.tls))
        assert [r.ok for r in results] == [True, True], [r.detail for r in results]
        r = subprocess.run(
            [*DICOMNODE, "echo", "--tls", "--config", str(cfg_path), f"ORTHANC@127.0.0.1:{orthanc.dicom}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        # The same send without TLS, or trusting the wrong CA, fails and says it may be retried.
        plain = store(out, "ORTHANC", "127.0.0.1", orthanc.dicom)
        assert not any(r.ok for r in plain) and {r.kind for r in plain} == {"transient"}
        wrong = load_config(
            write_config(
                tmp_path / "wrong.toml",
                tmp_path / "unused2",
                free_port(),
                tls=tls_section(pki, 0, ca_certificates=str(pki["intruder_crt"])),
            )
        )
        bad = store(out, "ORTHANC", "127.0.0.1", orthanc.dicom, tls=client_context(wrong.tls))
        assert not any(r.ok for r in bad)
    finally:
        orthanc.stop()
