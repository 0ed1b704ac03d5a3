"""Configuration: one typed place, loaded from TOML, strict about unknown keys.

A mistyped key in a hospital config must stop the service before it starts, not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dicomnode.toml"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


@dataclass
class NodeConfig:
    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: str = "var"
    min_free_bytes: int = 1_000_000_000
    fsync: bool = True
    max_associations: int = 16
    max_pdu_size: int = 131072
    network_timeout: int = 60
    metrics_port: int = 0
    retention_days: float = 30
    purge_free_bytes: int = 5_000_000_000
    results_retention_days: float = 30
    history_retention_days: float = 365


@dataclass
class SecurityConfig:
    allowed_callers: list[str] = field(default_factory=list)


@dataclass
class TLSConfig:
    """DICOM TLS (PS3.15 B.9, BCP 195): a second listener, and the client side for destinations with tls."""

    port: int = 0  # 0 = no TLS listener
    certificate: str = ""  # PEM, ours (server and client); chain allowed
    private_key: str = ""  # PEM, unencrypted; readable by the service user only
    ca_certificates: str = ""  # PEM bundle of the CAs whose peers we trust
    require_client_certificate: bool = True
    plain: bool = True  # keep the unencrypted node.port listener


@dataclass
class SchedulerConfig:
    study_quiet_seconds: float = 60
    series_quiet_seconds: float = 15
    max_wait_seconds: float = 900
    poll_seconds: float = 2
    workers: int = 1


@dataclass
class AIConfig:
    model: str = "default"
    device: str = "auto"
    candidate_slices: int = 3  # middle slices located per series; the best localised one is graded
    int8_graders: bool = True  # on a CPU, graders with measured activation ranges run in int8 (model card)


@dataclass
class OutputConfig:
    gsps: bool = True
    sr: bool = True
    secondary_capture: bool = False
    show_normal_levels: bool = True
    send_retries: int = 5
    retry_backoff_seconds: float = 10


@dataclass
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ai: AIConfig = field(default_factory=AIConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    destinations: list[Destination] = field(default_factory=list)
    source: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir).resolve()


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is list:
        (item,) = hint.__args__
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        if dataclasses.is_dataclass(item):
            return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _validate(cfg: Config) -> None:
    if not 1 <= len(cfg.node.ae_title.strip()) <= 16:
        raise ConfigError("node.ae_title: must be 1-16 characters")
    if not 0 < cfg.node.port < 65536:
        raise ConfigError("node.port: must be 1-65535")
    for caller in cfg.security.allowed_callers:
        ae = caller.split("@", 1)[0]
        if not 1 <= len(ae) <= 16:
            raise ConfigError(f"security.allowed_callers: bad entry {caller!r} (use 'AE' or 'AE@IP')")
    tls = cfg.tls
    if tls.port and not 0 < tls.port < 65536:
        raise ConfigError("tls.port: must be 0 (off) or 1-65535")
    if tls.port and tls.port == cfg.node.port:
        raise ConfigError("tls.port: must differ from node.port")
    if not tls.plain and not tls.port:
        raise ConfigError("tls.plain = false needs tls.port (otherwise nothing listens)")
    needs_tls = bool(tls.port) or any(d.tls for d in cfg.destinations)
    for key in ("certificate", "private_key", "ca_certificates"):
        value = getattr(tls, key)
        if needs_tls and not value:
            raise ConfigError(f"tls.{key}: required when tls.port is set or a destination uses tls")
        if value and not Path(value).is_file():
            raise ConfigError(f"tls.{key}: file not found: {value}")
    names = [d.name for d in cfg.destinations]
    if len(set(names)) != len(names):
        raise ConfigError("destinations: names must be unique")
    if cfg.scheduler.workers < 1:
        raise ConfigError("scheduler.workers: must be at least 1")
    check_ai(cfg.ai)


def check_ai(ai: AIConfig) -> None:
    """Also called for `dicomnode analyze`, whose flags override the file."""
    if not 1 <= ai.candidate_slices <= 5:
        raise ConfigError(f"ai.candidate_slices: must be 1-5, got {ai.candidate_slices}")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load PATH, else $DICOMNODE_CONFIG, else the bundled default."""
    chosen = Path(path or os.environ.get("DICOMNODE_CONFIG") or DEFAULT_CONFIG)
    try:
        with open(chosen, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {chosen}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: {exc}") from None
    cfg = _build(Config, raw, "config")
    cfg.source = str(chosen)
    _validate(cfg)
    return cfg
