"""Limits that keep one misbehaving peer from taking the node down."""

from __future__ import annotations

import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = [pytest.mark.peers, pytest.mark.security]


def test_simultaneous_association_limit(node_factory):
    node = node_factory(node={"max_associations": 2}).start()
    ae = AE("PROBE")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        # A third caller is never let in. Its answer should be "rejected transient" (what SCUs retry on); once in
        # a fresh-clone CI run (1 of ~100) the probe saw neither established nor rejected, not reproduced in 460
        # tries under load, so the answer is asked for up to three times, each one refused.
        outcomes = []
        for _ in range(3):
            extra = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
            assert not extra.is_established
            outcomes.append((extra.is_rejected, extra.is_aborted))
            if extra.is_rejected:
                assert extra.acceptor.primitive.result == 0x02  # rejected transient: try again later
                break
        assert outcomes[-1][0], f"never rejected, (rejected, aborted) per try: {outcomes}"
    finally:
        for a in held:
            a.release()
    # A released association's thread ends a moment after the release reply, and until then its slot is still
    # taken: a caller that comes back at once may be told "transient, try later" (what SCUs retry on). The slot
    # must be free again within a few seconds.
    deadline = time.monotonic() + 5
    again = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    while not again.is_established and time.monotonic() < deadline:
        assert again.is_rejected and again.acceptor.primitive.result == 0x02
        time.sleep(0.2)
        again = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert again.is_established
    again.release()


def test_wrong_called_ae_title_is_rejected(node_factory):
    node = node_factory().start()
    ae = AE("PROBE")
    ae.add_requested_context(Verification)
    a = ae.associate("127.0.0.1", node.port, ae_title="SOMEONEELSE")
    assert a.is_rejected and a.acceptor.primitive.diagnostic == 0x07  # called AE not recognised
