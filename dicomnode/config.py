"""Configuration: one typed place, loaded from TOML, strict about unknown keys and types.

A mistyped key in a hospital config must stop the service before it starts, not be silently ignored. Each check
sits on the field it checks (pydantic: ranges as field constraints, validators beside their fields); only checks
that join two sections sit on `Config`. pydantic rather than hand-written coercion: its errors name the key, it
validates a section built in code (`AIConfig(candidate_slices=9)`) as well as one read from the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dicomnode.toml"
STRICT = ConfigDict(extra="forbid")  # scalars are Strict* types: '11112' is not a port


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


def _ae_title(value: str) -> str:
    if not 1 <= len(value.strip()) <= 16:
        raise ValueError("must be 1-16 characters")
    return value


@dataclass(config=STRICT)
class NodeConfig:
    # all: receive and work; receiver: the SCP only; worker: completion rule, jobs and sending only (stable contract)
    role: Literal["all", "receiver", "worker"] = "all"
    receivers: StrictInt = Field(default=1, ge=1, le=64)  # receiver processes on node.port (SO_REUSEPORT; stable)
    ae_title: StrictStr = "DICOMNODE"
    host: StrictStr = "0.0.0.0"
    port: StrictInt = Field(default=11112, gt=0, lt=65536)
    data_dir: StrictStr = "var"
    min_free_bytes: StrictInt = Field(default=1_000_000_000, ge=0)
    fsync: StrictBool = True
    max_associations: StrictInt = Field(default=16, ge=1)
    max_pdu_size: StrictInt = Field(default=131072, ge=0)
    network_timeout: StrictInt = Field(default=60, ge=1)
    metrics_port: StrictInt = Field(default=0, ge=0, lt=65536)
    retention_days: StrictFloat = Field(default=30, ge=0)
    purge_free_bytes: StrictInt = Field(default=5_000_000_000, ge=0)
    results_retention_days: StrictFloat = Field(default=30, ge=0)
    history_retention_days: StrictFloat = Field(default=365, ge=0)

    _check_ae_title = field_validator("ae_title")(_ae_title)


@dataclass(config=STRICT)
class SecurityConfig:
    allowed_callers: list[StrictStr] = field(default_factory=list)

    @field_validator("allowed_callers")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        for caller in value:
            if not 1 <= len(caller.split("@", 1)[0]) <= 16:
                raise ValueError(f"bad entry {caller!r} (use 'AE' or 'AE@IP')")
        return value


@dataclass(config=STRICT)
class TLSConfig:
    """DICOM TLS (PS3.15 B.9, BCP 195): a second listener, and the client side for destinations with tls."""

    port: StrictInt = Field(default=0, ge=0, lt=65536)  # 0 = no TLS listener
    certificate: StrictStr = ""  # PEM, ours (server and client); chain allowed
    private_key: StrictStr = ""  # PEM, unencrypted; readable by the service user only
    ca_certificates: StrictStr = ""  # PEM bundle of the CAs whose peers we trust
    require_client_certificate: StrictBool = True
    plain: StrictBool = True  # keep the unencrypted node.port listener

    @field_validator("certificate", "private_key", "ca_certificates")
    @classmethod
    def _file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _listens(self) -> TLSConfig:
        if not self.plain and not self.port:
            raise ValueError("tls.plain = false needs tls.port (otherwise nothing listens)")
        return self


@dataclass(config=STRICT)
class SchedulerConfig:
    study_quiet_seconds: StrictFloat = Field(default=60, ge=0)
    series_quiet_seconds: StrictFloat = Field(default=2, ge=0)
    announced_quiet_seconds: StrictFloat = Field(default=0, ge=0)
    max_wait_seconds: StrictFloat = Field(default=900, ge=0)
    poll_seconds: StrictFloat = Field(default=0.5, gt=0)
    workers: StrictInt = Field(default=1, ge=1)
    lease_seconds: StrictFloat = Field(default=30, ge=3)  # a job's worker renews its lease; expired, another takes it


@dataclass(config=STRICT)
class AIConfig:
    model: StrictStr = "default"
    device: StrictStr = "auto"
    # middle slices located per series; the best localised one is graded
    candidate_slices: StrictInt = Field(default=3, ge=1, le=5)
    int8_graders: StrictBool = True  # on a CPU, graders with measured activation ranges run in int8 (model card)


@dataclass(config=STRICT)
class WebUser:
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]  # 64: the review and audit tables
    password_hash: StrictStr  # argon2, from `dicomnode hash-password`
    role: Literal["viewer", "reviewer"] = "viewer"  # a reviewer may also review and reject results (stable contract)

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        if not value.startswith("$argon2"):
            raise ValueError("not an argon2 hash: make one with `dicomnode hash-password`")
        return value


@dataclass(config=STRICT)
class WebConfig:
    """The results page (stable contract: port, host, users and their roles)."""

    port: StrictInt = Field(default=0, ge=0, lt=65536)  # 0 = no web page
    host: StrictStr = "127.0.0.1"
    users: list[WebUser] = field(default_factory=list)  # who may sign in and see names and images
    certificate: StrictStr = ""  # PEM: HTTPS, required off loopback (passwords and names never travel in clear)
    private_key: StrictStr = ""

    @field_validator("certificate", "private_key")
    @classmethod
    def _file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost")

    @model_validator(mode="after")
    def _exposed_needs_users_and_https(self) -> WebConfig:
        if bool(self.certificate) != bool(self.private_key):
            raise ValueError("web.certificate and web.private_key go together")
        if self.port and not self.loopback and not (self.users and self.certificate):
            raise ValueError("web.host other than loopback needs web.users and web.certificate/private_key (HTTPS)")
        return self


@dataclass(config=STRICT)
class ReviewConfig:
    # the results page and the log warn when the node's agreement with the reviewers over 30 days falls below this
    # share for a finding (0 = never; stable contract)
    agreement_floor: StrictFloat = Field(default=0.0, ge=0, le=1)


@dataclass(config=STRICT)
class OutputConfig:
    gsps: StrictBool = True
    sr: StrictBool = True
    secondary_capture: StrictBool = False
    show_normal_levels: StrictBool = True
    send_retries: StrictInt = Field(default=5, ge=0)
    retry_backoff_seconds: StrictFloat = Field(default=10, ge=0)


@dataclass(config=STRICT)
class Destination:
    """Where results go: a DICOM peer (C-STORE: ae_title, host, port, optional tls) or, with protocol "dicomweb", an
    archive's DICOMweb root (STOW-RS: url, optional username/password or token; stable contract)."""

    name: StrictStr
    ae_title: StrictStr = ""
    host: StrictStr = ""
    port: StrictInt = Field(default=0, ge=0, lt=65536)
    tls: StrictBool = False
    protocol: Literal["dimse", "dicomweb"] = "dimse"
    url: StrictStr = ""  # e.g. http://pacs:8042/dicom-web (STOW-RS posts to url/studies)
    username: StrictStr = ""  # HTTP basic authentication
    password: StrictStr = ""
    token: StrictStr = ""  # or a bearer token

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.protocol == "dicomweb":
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"destination {self.name!r}: dicomweb needs url = 'http(s)://host:port/root'")
            if self.token and self.username:
                raise ValueError(f"destination {self.name!r}: username/password or token, not both")
            if self.tls:
                raise ValueError(f"destination {self.name!r}: tls is DICOM TLS; a dicomweb url uses https://")
            return self
        _ae_title(self.ae_title)
        if not self.host or not self.port:
            raise ValueError(f"destination {self.name!r}: a DICOM destination needs ae_title, host and port")
        return self


@dataclass(config=STRICT)
class DatabaseConfig:
    # "" = the SQLite file data_dir/dicomnode.db (one machine); postgresql+psycopg://user@host:port/db is shared by
    # every process of a deployment (stable contract)
    url: StrictStr = ""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith("postgresql+psycopg://"):
            raise ValueError("use postgresql+psycopg://user@host:port/db (or leave empty for the SQLite file)")
        return value


@dataclass(config=STRICT)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ai: AIConfig = field(default_factory=AIConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    web: WebConfig = field(default_factory=WebConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    destinations: list[Destination] = field(default_factory=list)
    source: str = field(default="", init=False, compare=False)  # the file it was read from

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir).resolve()

    @property
    def database_target(self) -> Path | str:
        """What `storage.db.open_db` opens: the configured URL, else the SQLite file under data_dir."""
        return self.database.url or self.data_path / "dicomnode.db"

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        tls = self.tls
        if tls.port and tls.port == self.node.port:
            raise ValueError("tls.port: must differ from node.port")
        if tls.port or any(d.tls for d in self.destinations):
            for key in ("certificate", "private_key", "ca_certificates"):
                if not getattr(tls, key):
                    raise ValueError(f"tls.{key}: required when tls.port is set or a destination uses tls")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destinations: names must be unique")
        if len(self.destinations) > 1 and not all(d.ae_title for d in self.destinations):
            raise ValueError("destinations: with several, each needs ae_title (its studies' sender is matched to it)")
        return self


def _where(loc: tuple[Any, ...], section: str) -> str:
    out = section
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def explain(exc: ValidationError, section: str = "config") -> ConfigError:
    """The first problem, as 'config.node.port: Input should be ...' (or 'unknown config key ...'); section: where
    the checked values sit ("ai" for `dicomnode analyze`'s flags)."""
    err = exc.errors()[0]
    where = _where(err["loc"], section)
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return ConfigError(f"unknown config key {where}")
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{where}: {msg}" if err["loc"] else msg)


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
    try:
        cfg = TypeAdapter(Config).validate_python(raw)
    except ValidationError as exc:
        raise explain(exc) from None
    cfg.source = str(chosen)
    return cfg
