import dataclasses
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicomnode.config import DEFAULT_CONFIG, AIConfig, Config, ConfigError, NodeConfig, load_config


def test_bundled_default_matches_the_documented_defaults():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.node.ae_title == "DICOMNODE"
    assert cfg.node.port == 11112
    assert cfg.node.data_dir == "var"
    assert cfg.security.allowed_callers == []
    assert cfg.destinations == []
    assert cfg.ai.candidate_slices == 3


def test_every_default_in_code_is_the_shipped_files():
    """The bundled file documents every key, with the value the code uses when the key is left out."""
    assert load_config(DEFAULT_CONFIG) == Config()
    shipped = tomllib.loads(DEFAULT_CONFIG.read_text())
    for section in (f.name for f in dataclasses.fields(Config) if f.name not in ("destinations", "source")):
        assert set(shipped[section]) == {f.name for f in dataclasses.fields(getattr(Config(), section))}, section
    assert shipped["node"]["port"] == NodeConfig().port


def test_a_section_built_in_code_is_checked_as_the_files_is():
    with pytest.raises(ValidationError, match="candidate_slices"):
        AIConfig(candidate_slices=9)
    with pytest.raises(ValidationError, match="ae_title"):
        NodeConfig(ae_title="A_TITLE_LONGER_THAN_16")


@pytest.mark.parametrize(
    "text, key",
    [
        ("[node]\nport = 0\n", "config.node.port"),
        ("[node]\nae_title = ''\n", "config.node.ae_title"),
        ("[tls]\nport = 11112\ncertificate = ''\n", "tls.port: must differ"),
        ("[tls]\nplain = false\n", "tls.plain = false needs tls.port"),
        ("[tls]\ncertificate = '/nonexistent.pem'\n", "config.tls.certificate: file not found"),
        ("[scheduler]\nworkers = 0\n", "config.scheduler.workers"),
        ("[security]\nallowed_callers = ['A_TITLE_LONGER_THAN_16@1.2.3.4']\n", "config.security.allowed_callers"),
        (
            "[[destinations]]\nname='a'\nae_title='A'\nhost='h'\nport=1\n[[destinations]]\nname='a'\nae_title='B'\n"
            "host='h'\nport=2\n",
            "names must be unique",
        ),
    ],
)
def test_each_check_names_its_key(tmp_path: Path, text: str, key: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(p)


@pytest.mark.parametrize("n", [0, 6])
def test_candidate_slices_out_of_range_is_an_error(tmp_path: Path, n: int):
    p = tmp_path / "c.toml"
    p.write_text(f"[ai]\ncandidate_slices = {n}\n")
    with pytest.raises(ConfigError, match="ai.candidate_slices"):
        load_config(p)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[node]\nae_titel = 'X'\n", "node.ae_titel"),
        ("[nodes]\nport = 1\n", "config.nodes"),
        ("[[destinations]]\nname='a'\nae_title='A'\nhost='h'\nport=1\nprt=2\n", "destinations[0].prt"),
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, text: str, key: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(p)


def test_wrong_type_is_an_error(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[node]\nport = '11112'\n")
    with pytest.raises(ConfigError, match="node.port"):
        load_config(p)


def test_env_variable_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = tmp_path / "c.toml"
    p.write_text("[node]\nport = 4000\n")
    monkeypatch.setenv("DICOMNODE_CONFIG", str(p))
    assert load_config().node.port == 4000


def test_cli_reports_config_errors_before_starting(tmp_path: Path):
    import subprocess
    import sys

    p = tmp_path / "c.toml"
    p.write_text("[security]\nallowed_caller = []\n")
    r = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(p)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "security.allowed_caller" in r.stderr
