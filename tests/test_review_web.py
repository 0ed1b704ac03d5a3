"""The radiologist in the loop, in Debian's chromium after real studies went through the node to Orthanc: a viewer
may read but not review (403); a reviewer corrects two discs, drags a point, marks a chain one level off and
rejects one job -> the rows in the database, the rejection note (KOS) in Orthanc referencing the SR and GSPS,
dciodvfy clean, the job `rejected`; the agreement panel and `status --json` show the agreement counted by hand,
below the configured floor; export -> evaluate scores the reviewed discs; the audit lists it all; no patient data
in the logs."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from peers import DICOMNODE, free_port, storescu, successes
from test_deployment import cli_json, wait_done
from test_end_to_end import assert_no_phi, build_study
from test_reports import dciodvfy_errors
from test_web import screenshot

from ai.labels import CALLS, call_of
from dicomnode.web import hash_password

pytestmark = [pytest.mark.peers, pytest.mark.data]

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def sign_in(browser, base: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base + "/logout")
    browser.get(base + "/login")
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 30).until(lambda d: f"signed in as {name}" in d.page_source)


def post_status(base: str, path: str, cookies: list[dict], fields: dict[str, str]) -> int:
    """A form posted outside the browser with the browser's session cookie: the HTTP status."""
    req = urllib.request.Request(
        base + path,
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in cookies)},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_reviewer_corrects_and_rejects_in_chromium_and_the_pacs_gets_the_note(
    node_factory,
    orthanc_factory,
    browser,
    shared_data,
    tmp_path: Path,
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    node_port, web = free_port(), free_port()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    users = [
        {"name": "radiologist", "password_hash": hash_password("correct horse battery"), "role": "reviewer"},
        {"name": "clerk", "password_hash": hash_password("staple battery horse")},  # a viewer
    ]
    node = node_factory(
        port=node_port,
        web={"port": web, "users": users},
        scheduler={"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2},
        destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
        review={"agreement_floor": 0.95},
    ).start()
    studies = []
    for name in ("one", "two"):
        study, files = build_study(shared_data, tmp_path / name)
        assert successes((r := storescu(node.port, files)).stdout + r.stderr) == len(files)
        studies.append(study)
        assert wait_done(node.config, len(studies)) == ["done"] * len(studies)
    base = f"http://127.0.0.1:{web}"

    sign_in(browser, base, "clerk", "staple battery horse")  # a viewer: the findings, no form, a post refused
    browser.get(base + "/jobs/1")
    assert browser.find_elements(By.ID, "levels") and not browser.find_elements(By.ID, "review-form")
    assert post_status(base, "/jobs/1/review", browser.get_cookies(), {"chain_shift": "0"}) == 403

    sign_in(browser, base, "radiologist", "correct horse battery")
    assert post_status(base, "/jobs/1/review", browser.get_cookies(), {"chain_shift": "0"}) == 403  # no CSRF token
    browser.get(base + "/jobs/1")
    assert browser.find_element(By.ID, "no-reviews")
    node_says = {
        tr.get_attribute("data-level"): Select(
            tr.find_element(By.CSS_SELECTOR, "select[name^='call:']")
        ).first_selected_option.get_attribute("value")
        for tr in browser.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")
    }
    assert list(node_says) == ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    other = next(c for c in CALLS if c != node_says["L4-L5"])
    Select(browser.find_element(By.NAME, "call:L4-L5")).select_by_value(other)  # correction 1
    Select(browser.find_element(By.NAME, "pfirrmann:L3-L4")).select_by_value("4")
    Select(browser.find_element(By.ID, "chain-shift")).select_by_value("1")  # numbered one level too high
    img = browser.find_element(By.ID, "review-slice")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0)
    x_field = browser.find_element(By.NAME, "x:L5-S1")
    x_before = float(x_field.get_attribute("value"))
    point = browser.find_element(By.CSS_SELECTOR, "circle.point[data-level='L5-S1']")
    ActionChains(browser).click_and_hold(point).move_by_offset(15, 0).move_by_offset(15, 0).release().perform()
    x_after = float(x_field.get_attribute("value"))
    assert x_after > x_before + 5  # dragged right, in the slice's pixels (the image is shown scaled)
    screenshot(browser, tmp_path / "review_form.png")
    browser.find_element(By.ID, "save-review").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "review-list"))
    row = browser.find_element(By.CSS_SELECTOR, "#review-list tr:nth-child(2)").text
    assert "radiologist" in row and "one level too high" in row and row.endswith("3")  # call, grade, point

    browser.get(base + "/jobs/2")
    l12 = browser.find_element(By.NAME, "call:L1-L2")
    said_l12 = Select(l12).first_selected_option.get_attribute("value")
    Select(l12).select_by_value(next(c for c in CALLS if c != said_l12))  # correction 2
    browser.find_element(By.ID, "save-review").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "review-list"))
    browser.find_element(By.ID, "reject").click()
    browser.switch_to.alert.accept()
    deadline = time.time() + 60
    while time.time() < deadline and [j["state"] for j in cli_json(node.config, "jobs")] != ["rejected", "done"]:
        time.sleep(0.5)
    assert [j["state"] for j in cli_json(node.config, "jobs")] == ["rejected", "done"]  # newest first

    con = sqlite3.connect(node.data_dir / "dicomnode.db")  # the rows
    reviews = con.execute("SELECT job_id, reviewer, chain_shift FROM reviews ORDER BY job_id").fetchall()
    assert reviews == [(1, "radiologist", 1), (2, "radiologist", 0)]
    l51 = con.execute("SELECT node_x, x FROM review_levels WHERE review_id = 1 AND level = 'L5-S1'").fetchone()
    assert l51[1] == pytest.approx(x_after) and l51[1] > l51[0] + 5
    changed = con.execute("SELECT count(*) FROM review_levels WHERE call <> node_call").fetchone()[0]
    con.close()
    assert changed == 2

    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": studies[1]}})
    tags = {i: pacs.get(f"/instances/{i}/simplified-tags") for i in found}
    notes = [i for i, t in tags.items() if t["SOPClassUID"] == KOS]
    assert len(notes) == 1, [t["SOPClassUID"] for t in tags.values()]
    ours = {
        t["SOPInstanceUID"]
        for t in tags.values()
        if t["SOPClassUID"] in ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1")
    }
    note = tmp_path / "kos.dcm"
    with urllib.request.urlopen(pacs.url(f"/instances/{notes[0]}/file"), timeout=30) as r:
        note.write_bytes(r.read())
    import pydicom

    kos = pydicom.dcmread(note)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"
    referenced = {
        ref.ReferencedSOPInstanceUID
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert referenced == ours and len(ours) == 2
    assert dciodvfy_errors(note) == []

    # the agreement by hand: 12 discs, 2 calls changed; Pfirrmann: job 1's L3-L4 regraded where the node graded it
    browser.get(base + "/")
    d30 = cli_json(node.config, "status")["agreement"]["30d"]
    assert (d30["reviews"], d30["discs"], d30["call"]) == (2, 12, {"n": 12, "agreement": round(10 / 12, 4)})
    assert d30["numbering"] == {"n": 2, "agreement": 0.5}
    cell = browser.find_element(By.CSS_SELECTOR, "#agreement-table tr[data-finding='call'] td[data-window='30d']")
    assert cell.text == "83 % of 12"
    assert "call" in browser.find_element(By.ID, "below-floor").text  # 0.83 < the floor of 0.95
    screenshot(browser, tmp_path / "agreement.png")

    out = tmp_path / "export"  # export -> evaluate: the node's answers by level name against the reviewer's
    subprocess.run(
        [*DICOMNODE, "reviews", "export", "--out", str(out), "--config", str(node.config)], check=True, timeout=60
    )
    with open(out / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    assert len(labels) == 11  # job 1's chain shifted by one: the disc it marked L5-S1 has no name
    con = sqlite3.connect(node.data_dir / "dicomnode.db")
    said = {i: {lv["level"]: lv for lv in json.loads(res)} for i, res in con.execute("SELECT id, result FROM jobs")}
    con.close()
    agree = 0
    for lab in labels:
        labels_said = said[int(lab["job_id"])][lab["level"]]["labels"]
        agree += call_of(labels_said) == lab["call"]
    r = subprocess.run(
        [*DICOMNODE, "evaluate", "--data", str(out), "--json"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout)
    assert scored["site_discs"] == 11 and scored["site_call_agreement"] == round(agree / 11, 4)

    audit = cli_json(node.config, "audit")
    assert [(e["action"], e["username"]) for e in reversed(audit)] == [
        ("sign_in", "clerk"),
        ("sign_in", "radiologist"),
        ("review", "radiologist"),
        ("review", "radiologist"),
        ("reject", "radiologist"),
        ("export", audit[0]["username"]),
    ]
    node.stop()
    assert_no_phi(node)
