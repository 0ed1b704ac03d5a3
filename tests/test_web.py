"""The results page in a real browser (Debian's chromium, headless, driven by Selenium through chromium-driver) after a
real study went through the node: the queue and the job table, a job's decision, findings and events, the analysed
slice decoded, screenshots inspected; names and images only for a signed-in user; an exposed page needs users."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import free_port, storescu, successes
from PIL import Image
from pydicom.uid import generate_uid
from test_deployment import wait_done

from dicomnode.web import hash_password

pytestmark = pytest.mark.peers


def screenshot(driver, path: Path) -> Image.Image:
    driver.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    assert len(set(image.resize((64, 64)).get_flattened_data())) > 8, "blank screenshot"  # text, table lines, the slice
    return image


def test_the_results_page_in_chromium(node_factory, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    web = free_port()
    users = [{"name": "radiologist", "password_hash": hash_password("correct horse battery")}]
    sched = {"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2}
    node = node_factory(web={"port": web, "users": users}, scheduler=sched).start()
    files = write_series(tmp_path / "s", SeriesSpec("T2 SAG", slices=5), generate_uid())
    assert successes((r := storescu(node.port, files)).stdout + r.stderr) == 5
    assert wait_done(node.config, 1) == ["done"]
    base = f"http://127.0.0.1:{web}"

    browser.get(base + "/")  # not signed in: the job, no name, no image
    row = browser.find_element(By.CSS_SELECTOR, "#jobs tr.job")
    assert row.get_attribute("data-job") == "1" and "done" in row.text and "Test^Patient" not in browser.page_source
    assert browser.find_element(By.CSS_SELECTOR, '#queue td[data-state="done"]').text == "1"
    browser.get(base + "/jobs/1")
    assert not browser.find_elements(By.ID, "slice") and "Sign in to see" in browser.page_source
    with _status(base + "/jobs/1/slice.png") as code:
        assert code == 403

    browser.get(base + "/login")
    browser.find_element(By.ID, "name").send_keys("radiologist")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "sign-in").click()
    (error,) = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error"))
    assert error.text.startswith("Wrong")
    browser.find_element(By.ID, "name").send_keys("radiologist")
    browser.find_element(By.ID, "password").send_keys("correct horse battery")
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 20).until(lambda d: "signed in as radiologist" in d.page_source)
    assert "Test^Patient" in browser.find_element(By.ID, "jobs").text  # the name, for a signed-in user
    screenshot(browser, tmp_path / "home.png")

    browser.get(base + "/jobs/1")
    levels = browser.find_elements(By.CSS_SELECTOR, "#levels tbody tr")
    assert [r.text.split()[0] for r in levels][:3] == ["T12-L1", "L1", "L1-L2"] and len(levels) == 11
    stenosis = {r.text.split()[0]: r.find_element(By.CSS_SELECTOR, "td.stenosis").text for r in levels}
    assert all(re.fullmatch(r"(yes|no) \(\d\.\d\d\)", v) for k, v in stenosis.items() if "-" in k), stenosis
    assert all(v == "" for k, v in stenosis.items() if "-" not in k)  # vertebrae: no canal stenosis reading
    assert "Research use only" in browser.page_source and "T2 SAG" in browser.page_source
    img = browser.find_element(By.ID, "slice")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].complete", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
    shot = screenshot(browser, tmp_path / "job.png")
    box = img.rect
    crop = shot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    colours = set(crop.resize((64, 64)).get_flattened_data())
    assert len(colours) > 20  # a decoded MR slice with marks, not an empty frame


class _status:
    """HTTP status of a GET, as a context manager (urllib raises for 4xx)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> int:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def __exit__(self, *args: object) -> None:
        pass


def test_an_exposed_page_without_users_stops_the_node_before_it_starts(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[web]\nport = {free_port()}\nhost = "0.0.0.0"\n')
    r = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "web.host other than loopback needs web.users and web.certificate" in r.stderr


def test_hash_password_makes_a_hash_the_config_accepts(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "hash-password"],
        input="a long password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$")
    config = tmp_path / "c.toml"
    config.write_text(f'[web]\nport = 8080\nusers = [{{name = "a", password_hash = "{r.stdout.strip()}"}}]\n')
    from dicomnode.config import load_config

    assert load_config(config).web.users[0].name == "a"


@pytest.mark.security
def test_an_exposed_page_is_https_with_a_secure_cookie_and_hides_failure_text(node_factory, tmp_path: Path):
    import http.cookiejar
    import ssl
    import urllib.parse

    from pki import make_ca, make_leaf

    ca = make_ca(tmp_path / "pki", "ca")
    crt, key = make_leaf(tmp_path / "pki", "web", ca)
    web = free_port()
    users = [{"name": "radiologist", "password_hash": hash_password("correct horse battery")}]
    section = {"port": web, "host": "0.0.0.0", "users": users, "certificate": str(crt), "private_key": str(key)}
    sched = {"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2}
    node = node_factory(web=section, scheduler=sched).start()
    files = write_series(tmp_path / "s", SeriesSpec("T1 AX", plane="ax", slices=3), generate_uid())
    assert successes((r := storescu(node.port, files)).stdout + r.stderr) == 3
    ctx = ssl.create_default_context(cafile=str(ca[0]))
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ctx), urllib.request.HTTPCookieProcessor(jar)
    )
    base = f"https://127.0.0.1:{web}"
    deadline = time.time() + 60
    while time.time() < deadline and 'class="state state-no_input"' not in (
        page := opener.open(base + "/", timeout=30).read().decode()
    ):
        time.sleep(0.5)
    assert "no_input" in page and "no sagittal T2" not in page  # the reason's text only after sign-in
    with pytest.raises(OSError):  # plain HTTP is not served (URLError or the connection closed)
        urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10)
    form = urllib.parse.urlencode({"name": "radiologist", "password": "correct horse battery"}).encode()
    opener.open(base + "/login", data=form, timeout=30)
    (cookie,) = list(jar)
    assert cookie.secure and cookie.name == "session"
    page = opener.open(base + "/", timeout=30).read().decode()
    assert "signed in as radiologist" in page and "no sagittal T2" in page, page[page.find("<tbody") :][:1500]
