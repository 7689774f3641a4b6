"""Configuration: frozen dataclasses loaded once from TOML, validated once.

Owns: the schema of `dicomd.toml`, its defaults (the embedded configuration used when no file is given)
and its validation. Unknown keys are errors, because a misspelt key that silently falls back to a default
is how a production server ends up accepting every calling AE.

The key names are a public interface (deployments and tests rely on them); `config/dicomd.toml`
documents every one and a test checks that it loads and mentions each field defined here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

AE_TITLE_MAX = 16
_T = TypeVar("_T")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    ae_title: str = "DICOMD"
    host: str = "0.0.0.0"
    port: int = 11112
    # What to do when the called AE title of an A-ASSOCIATE-RQ is not ours: "reject" answers with
    # A-ASSOCIATE-RJ (permanent, service-user, called AE title not recognized); "accept" lets it pass,
    # which some sites need while modalities are being reconfigured.
    called_ae_check: Literal["reject", "accept"] = "reject"
    max_associations: int = 64
    # Largest P-DATA-TF PDU we accept (advertised in our Maximum Length sub-item), PS3.8 D.1.
    max_pdu_length: int = 262_144
    # ARTIM timer (PS3.8 9.1.5): bounds the wait for an A-ASSOCIATE-RQ after connect and for the
    # transport to close after a rejection, release or abort.
    artim_timeout: float = 30.0
    # An established association with no incoming bytes for this long is aborted.
    idle_timeout: float = 300.0
    # Bound on any single DIMSE exchange step: a write that the peer does not read, a response we wait for.
    dimse_timeout: float = 60.0
    # On SIGTERM/SIGINT: stop accepting, let running operations finish for this long, then A-ABORT.
    shutdown_timeout: float = 30.0
    # Use uvloop's event loop (the default); the standard loop otherwise.
    uvloop: bool = True


@dataclass(frozen=True, slots=True)
class StorageConfig:
    root: Path = Path("data/store")
    # Transfer syntaxes accepted for storage, in our order of preference when a presentation context
    # proposes several. Empty means the built-in list (native, then lossless, then lossy).
    transfer_syntaxes: tuple[str, ...] = ()
    # An instance whose SOP Instance UID is already stored: "keep" the stored one and answer Success,
    # "replace" it with the new one, or "reject" the new one (status 0111, duplicate SOP instance).
    duplicate_policy: Literal["keep", "replace", "reject"] = "keep"
    # "full": fsync each file and its directory, SQLite synchronous=FULL, before answering Success.
    # "relaxed": no fsync and synchronous=NORMAL: faster, but a power cut can lose acknowledged images.
    durability: Literal["full", "relaxed"] = "full"
    # Free space (MiB) kept on the store's filesystem: a C-STORE that finds less is refused with
    # A700 before anything is written, so that the index, its journal and the logs never meet a
    # full disk. 0: store until the disk itself is full.
    min_free_mb: int = 256


@dataclass(frozen=True, slots=True)
class IndexConfig:
    path: Path = Path("data/index.sqlite")
    # Seconds to wait for a database locked by another process before failing the operation.
    busy_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class QueryConfig:
    # C-FIND: match person names (PN) without regard to case: "doe^j*" finds "DOE^JOHN" and
    # "MÜLLER" finds "Müller" (PS3.4 C.2.2.2.1 leaves this to the SCP). false: exact case.
    pn_case_insensitive: bool = True
    # C-FIND: the most matches one query returns. The first max_matches are sent, then the query
    # ends with status A700 (Refused: out of resources) and a comment asking to refine it.
    # 0: no limit.
    max_matches: int = 10000


@dataclass(frozen=True, slots=True)
class RetrieveConfig:
    # C-GET and C-MOVE: seconds between Pending responses, which report the sub-operation counts
    # while a retrieve runs (PS3.4 C.4.2.3.1 and C.4.3.3.1 make them optional). A retrieve that
    # ends sooner gets its final response only. 0: one after every sub-operation, as most SCPs
    # do, at a cost of a response encoded, sent and read per instance.
    pending_interval: float = 0.25
    # C-MOVE sub-operations run in up to this many mover processes, started when first needed and
    # kept; each takes any number of moves, a new move going to the least busy one. Moves then
    # use more than one core and leave this process's event loop to the other associations.
    # 0: sub-operations run on the server's own event loop.
    move_processes: int = 2


@dataclass(frozen=True, slots=True)
class RemoteAE:
    ae_title: str
    host: str
    port: int
    # Open associations to this AE over TLS ([tls] certificate/key as ours, ca_certificates to
    # verify theirs).
    tls: bool = False


@dataclass(frozen=True, slots=True)
class TLSConfig:
    # A DICOM TLS listener (PS3.15 B.1 Secure Transport Connection Profile, BCP195 settings: TLS 1.2
    # or newer, forward-secret AEAD cipher suites) on its own port, beside the plain one.
    enabled: bool = False
    port: int = 2762
    # Keep the plain (non-TLS) listener too; false serves TLS only.
    plain_listener: bool = True
    certificate: str = ""  # PEM file: our certificate (chain)
    private_key: str = ""  # PEM file: its private key
    # PEM file of CA certificates: verifies client certificates, and the servers we connect to.
    ca_certificates: str = ""
    # Require and verify a client certificate signed by ca_certificates.
    verify_clients: bool = False


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    # Empty: any calling AE title may associate. Otherwise only these (exact, case-sensitive match,
    # as AE titles are compared in PS3.8 after trimming the space padding).
    allowed_calling_aets: tuple[str, ...] = ()
    # A calling AE title that is also a [[remote]] entry must connect from that entry's host
    # (compared with the addresses the host name resolves to); otherwise the association is
    # rejected as "calling AE title not recognized".
    check_remote_address: bool = False
    # Per calling AE title, the operations it may use (any of "store", "find", "get", "move");
    # an AE title not listed may use all of them. C-ECHO is always allowed. A refused request is
    # answered with status 0124 (Refused: not authorized).
    operations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


OPERATIONS = ("store", "find", "get", "move")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # An HTTP endpoint with Prometheus metrics (/metrics) and a health check (/healthz).
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9110


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": console rendering on a terminal, JSON lines otherwise (journald, docker logs).
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    remote: tuple[RemoteAE, ...] = ()
    security: SecurityConfig = field(default_factory=SecurityConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def remote_ae(self, ae_title: str) -> RemoteAE | None:
        for remote in self.remote:
            if remote.ae_title == ae_title:
                return remote
        return None


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("server", "called_ae_check"): ("reject", "accept"),
    ("storage", "duplicate_policy"): ("keep", "replace", "reject"),
    ("storage", "durability"): ("full", "relaxed"),
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("auto", "json", "console"),
}


ENV_PREFIX = "DICOMD_"


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: embedded defaults, overlaid by the TOML file when given, then
    by environment variables `DICOMD_<SECTION>__<KEY>` (containers configure this way)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
    _apply_env(data, os.environ if env is None else env)
    return from_mapping(data)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """DICOMD_SERVER__AE_TITLE=PACS sets [server] ae_title. The value is read as a TOML value when
    it is one (numbers, true/false, ["arrays"]), else as a string.

    DICOMD_REMOTE is the whole [[remote]] list, a TOML array of inline tables, and replaces the
    file's: DICOMD_REMOTE='[{ae_title = "VIEWER", host = "10.0.0.5", port = 104}]'."""
    for name, raw in env.items():
        if name == f"{ENV_PREFIX}REMOTE":
            data["remote"] = _remote_list(name, raw)
            continue
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section == "remote" or not key:
            raise ConfigError(
                f"{name}: only DICOMD_<SECTION>__<KEY> of a table section, or DICOMD_REMOTE,"
                " is supported"
            )
        try:
            value = _toml_value(raw)
        except tomllib.TOMLDecodeError:
            value = raw
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: [{section}] is not a table")
        table[key] = value


def _toml_value(raw: str) -> Any:
    """An environment variable's text read as a TOML value (raises TOMLDecodeError)."""
    return tomllib.loads(f"v = {raw}")["v"]


def _remote_list(name: str, raw: str) -> list[Any]:
    try:
        value = _toml_value(raw)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: not a TOML array of inline tables: {e}") from e
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(
            f'{name}: expected an array of inline tables, e.g. [{{ae_title = "VIEWER",'
            ' host = "10.0.0.5", port = 104}]'
        )
    return value


def from_mapping(data: Mapping[str, Any]) -> Config:
    known = {f.name for f in fields(Config)}
    _reject_unknown("", data, known)
    remote = data.get("remote", [])
    if not isinstance(remote, list):
        raise ConfigError("remote: expected an array of tables ([[remote]])")
    config = Config(
        server=_section(ServerConfig, "server", data.get("server", {})),
        storage=_section(StorageConfig, "storage", data.get("storage", {})),
        index=_section(IndexConfig, "index", data.get("index", {})),
        query=_section(QueryConfig, "query", data.get("query", {})),
        retrieve=_section(RetrieveConfig, "retrieve", data.get("retrieve", {})),
        remote=tuple(_section(RemoteAE, f"remote[{i}]", r) for i, r in enumerate(remote)),
        security=_section(SecurityConfig, "security", data.get("security", {})),
        tls=_section(TLSConfig, "tls", data.get("tls", {})),
        metrics=_section(MetricsConfig, "metrics", data.get("metrics", {})),
        log=_section(LogConfig, "log", data.get("log", {})),
    )
    _validate(config)
    return config


def _reject_unknown(where: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")


def _section(cls: type[_T], name: str, data: object) -> _T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: expected a table")
    flds = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(name, data, set(flds))
    section = name.split("[")[0]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if (section, key) == ("security", "operations"):
            kwargs[key] = _operations(value)
            continue
        default = flds[key].default
        kwargs[key] = _coerce(f"{name}.{key}", value, default, _CHOICES.get((section, key)))
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key (of [[remote]]) is missing
        raise ConfigError(f"{name}: {e}") from e


def _operations(value: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError("security.operations: expected a table of AE title = [operations]")
    out: dict[str, tuple[str, ...]] = {}
    for aet, ops in value.items():
        _check_ae_title(f"security.operations.{aet}", aet)
        if not isinstance(ops, list) or any(op not in OPERATIONS for op in ops):
            raise ConfigError(
                f"security.operations.{aet}: expected an array of {', '.join(OPERATIONS)}"
            )
        out[aet] = tuple(ops)
    return out


def _coerce(key: str, value: object, default: object, choices: tuple[str, ...] | None) -> object:
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if isinstance(default, int) or key.endswith(".port"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path")
        return Path(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected an array of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    return value


def _validate(config: Config) -> None:
    s = config.server
    _check_ae_title("server.ae_title", s.ae_title)
    _check_port("server.port", s.port, allow_zero=True)
    if s.max_associations < 1:
        raise ConfigError("server.max_associations: must be at least 1")
    # PS3.8 D.1: the receiver's maximum length must leave room for a PDV item header; 0 (no limit)
    # would let a peer send us PDUs of any size, which we do not allow.
    if not 4096 <= s.max_pdu_length <= 16 * 1024 * 1024:
        raise ConfigError("server.max_pdu_length: must be between 4096 and 16777216")
    for name in ("artim_timeout", "idle_timeout", "dimse_timeout", "shutdown_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"server.{name}: must be positive")
    seen: set[str] = set()
    for i, remote in enumerate(config.remote):
        _check_ae_title(f"remote[{i}].ae_title", remote.ae_title)
        _check_port(f"remote[{i}].port", remote.port, allow_zero=False)
        if not remote.host:
            raise ConfigError(f"remote[{i}].host: must not be empty")
        if remote.ae_title in seen:
            raise ConfigError(f"remote[{i}].ae_title: {remote.ae_title!r} is listed twice")
        seen.add(remote.ae_title)
    for aet in config.security.allowed_calling_aets:
        _check_ae_title("security.allowed_calling_aets", aet)
    for uid in config.storage.transfer_syntaxes:
        if not _is_transfer_syntax(uid):
            raise ConfigError(f"storage.transfer_syntaxes: {uid!r} is not a transfer syntax UID")
    if config.retrieve.pending_interval < 0:
        raise ConfigError("retrieve.pending_interval: must not be negative")
    if not 0 <= config.retrieve.move_processes <= 64:
        raise ConfigError("retrieve.move_processes: must be 0 to 64")
    if config.storage.min_free_mb < 0:
        raise ConfigError("storage.min_free_mb: must not be negative")
    if config.index.busy_timeout <= 0:
        raise ConfigError("index.busy_timeout: must be positive")
    t = config.tls
    if t.enabled or any(r.tls for r in config.remote):
        if not (t.certificate and t.private_key):
            raise ConfigError("tls: certificate and private_key are required when TLS is used")
        if t.verify_clients and not t.ca_certificates:
            raise ConfigError("tls.verify_clients: needs tls.ca_certificates")
    if t.enabled:
        _check_port("tls.port", t.port, allow_zero=True)
    if not t.plain_listener and not t.enabled:
        raise ConfigError("tls.plain_listener = false needs tls.enabled = true")
    if config.query.max_matches < 0:
        raise ConfigError("query.max_matches: must be 0 (no limit) or positive")


def _is_transfer_syntax(uid: str) -> bool:
    from pydicom.uid import UID

    try:
        return bool(UID(uid).is_transfer_syntax)
    except ValueError:  # a private UID: pydicom cannot tell, and neither can we store it
        return False


def _check_ae_title(key: str, value: str) -> None:
    # PS3.5 Table 6.2-1, AE: 16 characters at most, no control characters or backslash; leading and
    # trailing spaces are not significant, so a title made of spaces only is empty.
    if not value.strip() or value != value.strip():
        raise ConfigError(f"{key}: {value!r} must be non-empty without leading/trailing spaces")
    if len(value) > AE_TITLE_MAX:
        raise ConfigError(f"{key}: {value!r} is longer than {AE_TITLE_MAX} characters")
    if any(not (0x20 <= ord(c) < 0x7F) or c == "\\" for c in value):
        raise ConfigError(f"{key}: {value!r} has a character not allowed in an AE title")


def _check_port(key: str, value: int, *, allow_zero: bool) -> None:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{key}: {value} is not a TCP port")
