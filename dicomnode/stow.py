"""DICOMweb STOW-RS client (dicomweb-client): the same per-object results as the DIMSE client (`dicomnode.scu`), so
the send stage retries and fails them alike. An HTTP 4xx answer (other than 408 and 429) is permanent, a 5xx, a
timeout or a refused connection is transient; objects the archive lists as failed in a 200/202 answer are permanent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from dicomnode import logs
from dicomnode.scu import PERMANENT, TRANSIENT, SendResult

log = logs.get("dicomnode.stow")

RETRYABLE_HTTP = {408, 429}  # 4xx answers that say "later", not "never"


def _session(username: str, password: str, token: str) -> requests.Session:
    session = requests.Session()
    if username:
        session.auth = (username, password)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def store(files: list[Path], url: str, username: str = "", password: str = "", token: str = "") -> list[SendResult]:
    """POSTs the objects in one STOW-RS request; every object gets a result, and network trouble never raises."""
    datasets = [dcmread(f) for f in files]
    uids = [str(d.SOPInstanceUID) for d in datasets]
    with _session(username, password, token) as session:
        return _post(datasets, uids, url, session)


def _post(datasets: list[Any], uids: list[str], url: str, session: requests.Session) -> list[SendResult]:
    try:
        client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=(10, 120))
        client.set_http_retry_params(retry=False)  # the send stage retries, with its back-off and its records
        answer: Any = client.store_instances(datasets)
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        kind = PERMANENT if 400 <= code < 500 and code not in RETRYABLE_HTTP else TRANSIENT
        return [SendResult(uid, False, kind, f"HTTP {code} from STOW-RS") for uid in uids]
    except (requests.exceptions.RequestException, OSError) as exc:
        return [SendResult(uid, False, TRANSIENT, f"connect: {type(exc).__name__}") for uid in uids]
    failed = {
        str(item.ReferencedSOPInstanceUID): item.get("FailureReason")
        for item in (answer.get("FailedSOPSequence", []) if answer is not None else [])
    }
    return [
        SendResult(uid, False, PERMANENT, f"archive failure reason {failed[uid]}")
        if uid in failed
        else SendResult(uid, True, detail="stored (STOW-RS)")
        for uid in uids
    ]
