from __future__ import annotations

import os

# Before torch is imported anywhere in this xdist worker or the nodes it starts (only in a worker: the controller's
# environment is what the workers inherit): two workers each running torch with a thread per core oversubscribe the
# cores and torch's OpenMP threads spin against each other (tests/test_site.py with tests/test_quantize.py on 2 cores:
# 127 s with the default, 50 s with a thread per worker).
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from peers import PG_BIN, NodeProcess, Orthanc, Postgres, free_port, have, write_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tianchi-spark-train150"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_peers = pytest.mark.skip(
        reason="DICOM peers (dcmtk, orthanc, dicom3tools) not installed: run the README test command"
    )
    skip_data = pytest.mark.skip(reason=f"annotated data not found at {SHARED_DATA} (../shared is absent)")
    for item in items:
        if "peers" in item.keywords and not have("storescu", "echoscu", "/usr/sbin/Orthanc"):
            item.add_marker(skip_peers)
        if "data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


def throwaway_postgres() -> Postgres:
    """A cluster in its own folder under /tmp (pytest's folders are private to the user running the tests, and
    the server runs as `postgres` when that user is root)."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL not installed (Debian package postgresql): run the README test command")
    return Postgres(Path(tempfile.mkdtemp(prefix="dicomnode-pg-")))


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the test run; each test takes its own database (`pg_url`)."""
    server = throwaway_postgres().start()
    yield server
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50] + f"_{free_port()}"
    return postgres.database(name)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def node_factory(tmp_path: Path):
    """Start nodes with a config built from keyword sections; all are stopped at the end."""
    started: list[NodeProcess] = []

    def make(name: str = "node", port: int | None = None, **sections) -> NodeProcess:
        port = port or free_port()
        cfg = write_config(tmp_path / f"{name}.toml", tmp_path / name, port, **sections)
        node = NodeProcess(cfg, tmp_path / f"{name}.log")
        node.port = port  # type: ignore[attr-defined]
        node.data_dir = tmp_path / name  # type: ignore[attr-defined]
        started.append(node)
        return node

    yield make
    for n in started:
        n.stop()


@pytest.fixture
def orthanc_factory(tmp_path: Path):
    started: list[Orthanc] = []

    def make(modalities=None, name: str = "orthanc") -> Orthanc:
        o = Orthanc(tmp_path / name, modalities=modalities)
        started.append(o)
        return o.start()

    yield make
    for o in started:
        o.stop()


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Debian's chromium, headless, through Selenium and chromium-driver: every web page is tested in it."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver (Debian) not installed: run the README test command")
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
