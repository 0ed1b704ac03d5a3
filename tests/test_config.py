from pathlib import Path

import pytest

from dicomnode.config import DEFAULT_CONFIG, ConfigError, load_config


def test_bundled_default_matches_the_documented_defaults():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.node.ae_title == "DICOMNODE"
    assert cfg.node.port == 11112
    assert cfg.node.data_dir == "var"
    assert cfg.security.allowed_callers == []
    assert cfg.destinations == []
    assert cfg.ai.candidate_slices == 3


@pytest.mark.parametrize("n", [0, 6])
def test_candidate_slices_out_of_range_is_an_error(tmp_path: Path, n: int):
    p = tmp_path / "c.toml"
    p.write_text(f"[ai]\ncandidate_slices = {n}\n")
    with pytest.raises(ConfigError, match="ai.candidate_slices"):
        load_config(p)


@pytest.mark.parametrize("text, key", [
    ("[node]\nae_titel = 'X'\n", "node.ae_titel"),
    ("[nodes]\nport = 1\n", "config.nodes"),
    ("[[destinations]]\nname='a'\nae_title='A'\nhost='h'\nport=1\nprt=2\n", "destinations[0].prt"),
])
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
    r = subprocess.run([sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "security.allowed_caller" in r.stderr
