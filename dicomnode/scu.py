"""Service class user: C-ECHO and C-STORE of our results, with each object's status checked.

pynetdicom 3.0.4 sometimes loses a C-STORE response on back-to-back sends; a short DIMSE timeout and a retry
of the missing objects on a fresh association cover it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicomnode import logs

log = logs.get("dicomnode.scu")

# Association rejections and statuses after which a retry cannot help.
PERMANENT = "permanent"
TRANSIENT = "transient"


@dataclass
class SendResult:
    sop_instance_uid: str
    ok: bool
    kind: str = ""  # PERMANENT / TRANSIENT when not ok
    detail: str = ""


# pynetdicom names its SOP classes at run time (sop_class.Verification), out of a type checker's sight
VERIFICATION = UID("1.2.840.10008.1.1")


def _ae(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 15
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    return ae


def _tls_args(ctx: ssl.SSLContext | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's tls_args: the context and the name to check the peer's certificate against."""
    if ctx is None:
        return None
    return ctx, host


def echo(
    ae_title: str, host: str, port: int, calling_ae: str = "DICOMNODE", tls: ssl.SSLContext | None = None
) -> tuple[bool, str]:
    ae = _ae(calling_ae)
    ae.add_requested_context(VERIFICATION)
    try:
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=_tls_args(tls, host))
    except (OSError, ssl.SSLError) as exc:
        return False, f"connect: {exc}"
    if not assoc.is_established:
        return False, "association not established" + (" (rejected)" if assoc.is_rejected else "")
    try:
        status = assoc.send_c_echo()
        ok = bool(status) and status.Status == 0x0000
        return ok, f"status 0x{status.Status:04X}" if status else "no response"
    finally:
        assoc.release()


def store(
    files: list[Path],
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str = "DICOMNODE",
    tls: ssl.SSLContext | None = None,
) -> list[SendResult]:
    """Send files over one association (DICOM TLS when `tls` is given); every object gets a result.
    Never raises for network trouble; a TLS handshake failure is transient (certificates get fixed)."""
    datasets = [dcmread(f) for f in files]
    ae = _ae(calling_ae)
    for cls_uid, ts in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(cls_uid, ts)
    try:
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=_tls_args(tls, host))
        if not assoc.is_established and not assoc.is_rejected:
            # A peer that closes its socket right after an A-ASSOCIATE-RJ sometimes reads as an abort here;
            # one immediate second try tells a refusing peer from one that is down.
            assoc = ae.associate(host, port, ae_title=ae_title, tls_args=_tls_args(tls, host))
    except (OSError, ssl.SSLError) as exc:
        return [SendResult(str(d.SOPInstanceUID), False, TRANSIENT, f"connect: {exc}") for d in datasets]
    if not assoc.is_established:
        if assoc.is_rejected:
            prim = assoc.acceptor.primitive
            result = getattr(prim, "result", None)
            kind = PERMANENT if result == 0x01 else TRANSIENT
            detail = f"association rejected (result {result}, reason {getattr(prim, 'diagnostic', None)})"
        else:
            kind, detail = TRANSIENT, "association not established (peer down or aborted)"
        return [SendResult(str(d.SOPInstanceUID), False, kind, detail) for d in datasets]
    results = []
    try:
        for d in datasets:
            uid = str(d.SOPInstanceUID)
            if not assoc.is_established:
                results.append(SendResult(uid, False, TRANSIENT, "association lost"))
                continue
            try:
                status = assoc.send_c_store(d)
            except ValueError as exc:  # no accepted presentation context for this SOP class
                results.append(SendResult(uid, False, PERMANENT, f"not accepted by peer: {exc}"))
                continue
            if not status:
                results.append(SendResult(uid, False, TRANSIENT, "no response (timeout or abort)"))
                continue
            results.append(classify(uid, int(status.Status)))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def classify(uid: str, code: int) -> SendResult:
    """A C-STORE status by pynetdicom's own categories (PS3.4 and PS3.7): Success and every Warning (0x0001, 0x0107,
    0x0116, 0xBxxx) mean the object is stored; out of resources (0xA7xx, 0x0213) is worth a later try; any other
    failure is permanent."""
    category = code_to_category(code)
    if category in (STATUS_SUCCESS, STATUS_WARNING):
        return SendResult(uid, True, detail=f"0x{code:04X} ({category.lower()})")
    if code & 0xFF00 == 0xA700 or code == 0x0213:
        return SendResult(uid, False, TRANSIENT, f"status 0x{code:04X}")
    return SendResult(uid, False, PERMANENT, f"status 0x{code:04X} ({category.lower()})")
