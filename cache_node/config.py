"""Node configuration: packaged defaults < TOML file < EDGEDEPOT_* environment < flags.

Every setting is declared once, in `SETTINGS` (TOML key, flag, environment variable, type); the
CLI builds its flags from that table and `load_config` checks every layer against it, so a typo
at any depth (`[index] tll`, `[apt.main] sourc`) stops the node with one line naming the full key.

`load_config` is pure: it reads the files it is pointed at but starts, creates and writes
nothing, and returns a new frozen `NodeConfig` or raises `ConfigError`. A reload (SIGHUP) calls
it again and keeps the running configuration when it raises. Nothing here reads the environment
at import time; the environment mapping is passed in.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from distro import sizes
from syncer.http_client import ClientSettings

Role = Literal["origin", "cache"]
Kind = Literal["str", "int", "float", "bool", "list", "size"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
DEFAULT_LISTEN = "127.0.0.1:8080"

# The admin token itself only ever comes from the environment (never from a file that might be
# world-readable, never from a flag that `ps` shows); `admin.token_file` names a file holding it.
ADMIN_TOKEN_ENV = "EDGEDEPOT_ADMIN_TOKEN"
# EDGEDEPOT_* variables that belong to other edgedepot tools (tests, resolver caches); ignored.
OTHER_TOOLS_ENV = frozenset({"EDGEDEPOT_CACHE_DIR", "EDGEDEPOT_ORACLE_FULL",
                             "EDGEDEPOT_GLANCE_VENV_DIR"})


class ConfigError(ValueError):
    """The configuration is invalid; the one-line message names the key and what is wrong."""


@dataclass(frozen=True)
class Setting:
    """One setting: its dotted TOML key, command-line flag and `EDGEDEPOT_<NAME>` variable."""

    name: str      # flat name: argparse dest, and the environment variable's suffix
    key: str       # dotted TOML key
    kind: Kind
    flag: str
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "EDGEDEPOT_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("role", "role", "str", "--role", "origin (no upstream) or cache",
            ("origin", "cache")),
    Setting("listen", "listen", "str", "--listen",
            f"HOST:PORT for plain HTTP (port 0 picks a free port); default {DEFAULT_LISTEN}, "
            "none when --tls-listen is given", metavar="HOST:PORT"),
    Setting("store", "store", "str", "--store", "directory for the store and built repositories",
            metavar="DIR"),
    Setting("upstream", "upstream", "str", "--upstream",
            "cache role: base URL of the origin or a parent cache", metavar="URL"),
    Setting("quota", "quota", "size", "--quota", "store size limit, e.g. 50G (LRU eviction)"),
    Setting("log_level", "log_level", "str", "--log-level", "log level",
            ("debug", "info", "warning", "error")),
    Setting("allow", "allow", "list", "--allow",
            "client networks allowed to connect (repeatable); default: everyone",
            metavar="CIDR"),
    Setting("trusted_proxies", "trusted_proxies", "list", "--trusted-proxy",
            "load balancers (e.g. the region's HAProxy) whose X-Forwarded-For names the "
            "client, for the allow list, access log and per-client counts (repeatable)",
            metavar="CIDR"),
    Setting("workers", "workers", "int", "--workers",
            "worker processes over one store (0: one per CPU core)", metavar="N"),
    Setting("drain_timeout", "drain_timeout", "float", "--drain-timeout",
            "seconds in-flight requests may take to finish on shutdown", metavar="SECONDS"),
    Setting("access_log", "access_log", "str", "--access-log",
            "write an access log to FILE, or '-' for standard output", metavar="FILE|-"),
    Setting("access_log_format", "access_log_format", "str", "--access-log-format",
            "access log lines as text or JSON", ("text", "json")),
    Setting("index_ttl", "index.ttl", "float", "--index-ttl",
            "seconds before Release files / project pages are revalidated", metavar="SECONDS"),
    Setting("upstream_connect_timeout", "upstream_client.connect_timeout", "float",
            "--upstream-connect-timeout", "seconds to connect to the upstream", metavar="SECONDS"),
    Setting("upstream_read_timeout", "upstream_client.read_timeout", "float",
            "--upstream-read-timeout", "longest silence while reading a body", metavar="SECONDS"),
    Setting("upstream_retries", "upstream_client.retries", "int", "--upstream-retries",
            "extra attempts on 5xx, connection errors and broken bodies", metavar="N"),
    Setting("upstream_backoff", "upstream_client.backoff", "float", "--upstream-backoff",
            "first retry delay, doubled each attempt", metavar="SECONDS"),
    Setting("upstream_ca", "upstream_tls.ca", "str", "--upstream-ca",
            "PEM CA bundle trusted for https upstreams, in addition to the system's",
            metavar="FILE"),
    Setting("upstream_client_cert", "upstream_tls.client_cert", "str", "--upstream-client-cert",
            "PEM client certificate presented to https upstreams (mTLS)", metavar="FILE"),
    Setting("upstream_client_key", "upstream_tls.client_key", "str", "--upstream-client-key",
            "PEM private key of --upstream-client-cert", metavar="FILE"),
    Setting("tls_listen", "tls.listen", "str", "--tls-listen", "HOST:PORT for HTTPS",
            metavar="HOST:PORT"),
    Setting("tls_cert", "tls.cert", "str", "--tls-cert",
            "PEM server certificate (chain) for --tls-listen", metavar="FILE"),
    Setting("tls_key", "tls.key", "str", "--tls-key", "PEM private key of --tls-cert",
            metavar="FILE"),
    Setting("tls_client_ca", "tls.client_ca", "str", "--tls-client-ca",
            "PEM CA bundle; when set, HTTPS clients must present a certificate it signed",
            metavar="FILE"),
    Setting("admin_token_file", "admin.token_file", "str", "--admin-token-file",
            f"file holding the bearer token admin requests need ({ADMIN_TOKEN_ENV} gives the "
            "token itself)", metavar="FILE"),
    Setting("signing_gnupg_home", "signing.gnupg_home", "str", "--gnupg-home",
            "origin: GnuPG home with the key that signs built repositories", metavar="DIR"),
    Setting("signing_key_id", "signing.key_id", "str", "--signing-key",
            "origin: id or fingerprint of the key to sign with", metavar="KEYID"),
    Setting("glance_enabled", "glance.enabled", "bool", "--glance",
            "serve the Glance image API (--no-glance turns it off)"),
    Setting("images", "glance.images", "str", "--images",
            "origin: directory of Glance image records and data", metavar="DIR"),
    Setting("glance_upstream", "glance.upstream", "str", "--glance-upstream",
            "origin: URL of a real Glance API to cache images from", metavar="URL"),
    Setting("glance_auth_ttl", "glance.auth_ttl", "float", "--glance-auth-ttl",
            "seconds a token's image-visibility answer is cached", metavar="SECONDS"),
    Setting("glance_offline_policy", "glance.offline_policy", "str", "--glance-offline-policy",
            "what may be served while the upstream is unreachable", ("public", "none", "cached")),
    Setting("glance_forward_tokens_over_plain_http", "glance.forward_tokens_over_plain_http",
            "bool", "--glance-forward-tokens-over-plain-http",
            "allow forwarding callers' Glance tokens to a plain-http, non-loopback upstream "
            "(they cross the network in clear)"),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_BY_NAME = {s.name: s for s in SETTINGS}
_BY_ENV = {s.env: s for s in SETTINGS}
SECTIONS = frozenset(s.key.split(".")[0] for s in SETTINGS if "." in s.key)
# [apt.NAME] and [pypi.NAME] tables and the keys each may hold.
REPO_KEYS: dict[str, tuple[str, ...]] = {"apt": ("source", "suite"), "pypi": ("source",)}


@dataclass(frozen=True)
class ListenAddress:
    """A validated HOST:PORT to bind (port 0: the kernel picks one)."""

    host: str   # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RepoSource:
    """One named repository: a local directory or an upstream URL."""

    name: str
    source: str
    suite: str = "stable"

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    @property
    def path(self) -> Path:
        return Path(self.source)


@dataclass(frozen=True)
class UpstreamSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5


@dataclass(frozen=True)
class UpstreamTlsSettings:
    """How this node talks HTTPS to its upstreams: extra trusted CAs and an mTLS identity.
    Files are checked to exist and parse (and the pair to match) at load time."""

    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class TlsServerSettings:
    """The HTTPS listener; `client_ca` set means clients must present a certificate."""

    listen: ListenAddress | None = None
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.listen is not None


@dataclass(frozen=True)
class AdminSettings:
    """The bearer token admin requests need (None: admin endpoints are not protected)."""

    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SigningSettings:
    gnupg_home: Path | None = None
    key_id: str = ""

    @property
    def enabled(self) -> bool:
        return self.gnupg_home is not None and bool(self.key_id)


@dataclass(frozen=True)
class GlanceSettings:
    """Image service: origin backends (a directory of images and/or a real Glance) and the
    authorization cache every node keeps."""

    images_dir: Path | None = None      # origin: directory of image records + data files
    upstream_url: str | None = None     # origin: a real Glance API endpoint (token passed through)
    auth_ttl: float = 30.0              # seconds a token's visibility answer is cached
    offline_policy: str = "public"      # upstream unreachable: "public" | "none" | "cached"
    enabled: bool = True
    forward_tokens_over_plain_http: bool = False

    @property
    def enabled_on_origin(self) -> bool:
        return self.enabled and (self.images_dir is not None or self.upstream_url is not None)


@dataclass(frozen=True)
class NodeConfig:
    role: Role
    listen: ListenAddress | None       # plain HTTP; None when the node listens on TLS only
    store_dir: Path
    upstream: str | None
    quota_bytes: int | None
    index_ttl: float
    upstream_client: UpstreamSettings
    signing: SigningSettings
    apt: tuple[RepoSource, ...]
    pypi: tuple[RepoSource, ...]
    log_level: str = "info"
    glance: GlanceSettings = GlanceSettings()
    tls: TlsServerSettings = TlsServerSettings()
    upstream_tls: UpstreamTlsSettings = UpstreamTlsSettings()
    admin: AdminSettings = AdminSettings()
    allow: tuple[IPNetwork, ...] = ()  # empty: every client may connect
    trusted_proxies: tuple[IPNetwork, ...] = ()  # peers whose X-Forwarded-For is believed
    drain_timeout: float = 30.0
    workers: int = 1                   # worker processes (resolved: never 0 here)
    access_log: str | None = None      # a file path, "-" for standard output, None for off
    access_log_format: Literal["text", "json"] = "text"
    warnings: tuple[str, ...] = ()     # one line each, for the CLI to print

    def apt_repo(self, name: str) -> RepoSource | None:
        return next((r for r in self.apt if r.name == name), None)

    def pypi_repo(self, name: str) -> RepoSource | None:
        return next((r for r in self.pypi if r.name == name), None)

    def repo_source(self, kind: str, name: str) -> RepoSource | None:
        """Where repository `name` comes from: as configured, or (cache role) the upstream
        node's repository of that name. The one place that maps names to URLs, so a reload
        that moves the upstream moves every repository the same way."""
        configured = self.apt_repo(name) if kind == "apt" else \
            self.pypi_repo(name) if kind == "pypi" else None
        if configured is not None or self.role != "cache" or self.upstream is None:
            return configured
        if kind == "apt":
            return RepoSource(name, f"{self.upstream}apt/{name}/")
        if kind == "pypi":
            return RepoSource(name, f"{self.upstream}pypi/{name}/simple/")
        return None

    @property
    def delta_url(self) -> str | None:
        """The upstream node's delta endpoints (only an edgedepot upstream has them)."""
        return f"{self.upstream}delta/v1/" if self.upstream else None

    @property
    def glance_upstream(self) -> str | None:
        """The Glance API images come from over HTTP: the next node's `/glance/` (cache) or
        a real Glance (origin with `glance.upstream`); None for a directory or no images."""
        if self.role == "cache":
            return f"{self.upstream}glance/" if self.upstream else None
        return None if self.glance.images_dir is not None else self.glance.upstream_url

    def client_allowed(self, address: str) -> bool:
        """Whether a client at `address` may connect (`allow` empty: everyone)."""
        if not self.allow:
            return True
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.allow)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client a request is from: its TCP peer, or, when the peer is a trusted proxy,
        the nearest address in `X-Forwarded-For` that is not one (addresses further left were
        written by whoever sent the request, so they are not believed)."""
        if not self.trusted_proxies or not forwarded_for or not self._trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")]
        for hop in reversed(hops):
            ip = _ip(hop)
            if ip is None:
                return peer  # a malformed hop: the proxy's own address is all we know
            if not self._trusted(hop):
                return str(ip)
        return str(_ip(hops[0]) or peer)

    def _trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.trusted_proxies)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a client set (IPv4-mapped IPv6 as IPv4); None when it is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class ConfigSources:
    """Everything `load_config` reads, kept so a reload can read the same places again."""

    config_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, Any] = field(default_factory=dict)
    apt_flags: Sequence[str] = ()
    pypi_flags: Sequence[str] = ()

    def load(self) -> NodeConfig:
        return load_config(self.config_file, self.env, self.flags, self.apt_flags,
                           self.pypi_flags)


# --------------------------------------------------------------------------- parsing helpers


def parse_size(text: str | int | None, key: str = "quota") -> int | None:
    """`distro.sizes.parse_size` with the config's error type (the message names the key)."""
    if isinstance(text, bool) or (text is not None and not isinstance(text, (str, int))):
        raise ConfigError(f"{key}: expected a size such as 500M or 50G, got {text!r}")
    if isinstance(text, int) and text < 0:
        raise ConfigError(f"{key}: must not be negative")
    try:
        return sizes.parse_size(text, key)
    except sizes.SizeError as exc:
        raise ConfigError(str(exc)) from None


def parse_listen(text: str, where: str) -> ListenAddress:
    """`HOST:PORT`, `[IPV6]:PORT`; HOST an IP address or a host name."""
    host, sep, port_text = text.strip().rpartition(":")
    hint = "expected HOST:PORT such as 0.0.0.0:8080 or [::]:8443"
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where}: {hint}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{where}: {host} is not an IPv6 address") from None
        return ListenAddress(host[1:-1], int(port_text))
    if ":" in host:
        raise ConfigError(f"{where}: an IPv6 address goes in brackets ([{host}]:{port_text})")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if host.replace(".", "").isdigit() or not _HOSTNAME_RE.match(host):
            raise ConfigError(f"{where}: {host!r} is neither an IP address nor a host name") \
                from None
    return ListenAddress(host, int(port_text))


def parse_network(text: str, where: str) -> IPNetwork:
    """A CIDR (`10.0.0.0/8`) or a single address; host bits set is a mistake worth naming."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{where}: {text!r} is not an IP network "
                              "(examples: 10.0.0.0/8, 192.0.2.7, 2001:db8::/32)") from None
        raise ConfigError(f"{where}: {text!r} has host bits set (did you mean {loose}?)") \
            from exc


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is a loopback address (or `localhost`); no DNS lookups."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_repo_spec(spec: str, kind: str) -> RepoSource:
    """Parse a `NAME=DIR` or `NAME=URL` flag value."""
    if "=" not in spec:
        raise ConfigError(f"--{kind} {spec!r}: expected NAME=DIR or NAME=URL")
    name, source = spec.split("=", 1)
    return _make_repo(kind, name.strip(), {"source": source.strip()}, f"--{kind}")


def _make_repo(kind: str, name: str, table: Mapping[str, Any], source_name: str) -> RepoSource:
    where = f"{kind}.{name}" + _in(source_name)
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: repository names are letters, digits, '.', '_', '-'")
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{kind}.{name}.source{_in(source_name)}: required "
                          "(a directory or an http(s) URL)")
    suite = table.get("suite", "stable")
    if not isinstance(suite, str) or not _NAME_RE.match(suite):
        raise ConfigError(f"{kind}.{name}.suite{_in(source_name)}: invalid suite name {suite!r}")
    if source.startswith(("http://", "https://")):
        if not urlsplit(source).netloc:
            raise ConfigError(f"{kind}.{name}.source{_in(source_name)}: URL without host: "
                              f"{source!r}")
        if not source.endswith("/"):
            source += "/"
    elif not Path(source).is_dir():
        raise ConfigError(f"{kind}.{name}.source{_in(source_name)}: source directory {source} "
                          "does not exist")
    return RepoSource(name=name, source=source, suite=suite)


def _in(source: str) -> str:
    """How a message names where a value came from."""
    if source.startswith(("EDGEDEPOT_", "--")):
        return f" (from {source})"
    return f" in {source}"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r}"


def _unknown_key(key: str, source: str, candidates: Sequence[str]) -> ConfigError:
    """`unknown key index.tll in node.toml (did you mean index.ttl?)`."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        siblings = [c for c in candidates if c.rpartition(".")[0] == key.rpartition(".")[0]]
        by_leaf = difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1] for c in siblings], n=1)
        close = [c for c in siblings if by_leaf and c.rsplit(".", 1)[-1] == by_leaf[0]]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown key {key}{_in(source)}{hint}")


# --------------------------------------------------------------------------- layering


@dataclass(frozen=True)
class _Value:
    raw: Any
    source: str        # "defaults.toml", the config file, "EDGEDEPOT_X" or "--flag"
    from_text: bool    # environment or flag: strings are parsed


def _walk_toml(tree: Mapping[str, Any], source: str, values: dict[str, _Value],
               repos: dict[str, dict[str, tuple[dict[str, Any], str]]]) -> None:
    """Check every key of a TOML tree against the schema and record the values it sets."""
    known = [s.key for s in SETTINGS]
    for key, value in tree.items():
        if key in _BY_KEY:
            values[_BY_KEY[key].name] = _Value(value, source, False)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}{_in(source)}: expected a table [{key}], "
                                  f"got {_type_name(value)}")
            for sub, subvalue in value.items():
                full = f"{key}.{sub}"
                if full not in _BY_KEY:
                    raise _unknown_key(full, source, known)
                values[_BY_KEY[full].name] = _Value(subvalue, source, False)
        elif key in REPO_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}{_in(source)}: expected tables [{key}.NAME], "
                                  f"got {_type_name(value)}")
            for name, table in value.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"{key}.{name}{_in(source)}: expected a table "
                                      f"[{key}.{name}] with source = ..., "
                                      f"got {_type_name(table)}")
                allowed = [f"{key}.{name}.{k}" for k in REPO_KEYS[key]]
                for sub in table:
                    if f"{key}.{name}.{sub}" not in allowed:
                        raise _unknown_key(f"{key}.{name}.{sub}", source, allowed)
                repos[key][name] = (dict(table), source)
        else:
            raise _unknown_key(key, source, [*known, *SECTIONS, *REPO_KEYS])


def _read_env(env: Mapping[str, str], values: dict[str, _Value], warnings: list[str]) -> str | None:
    """Record EDGEDEPOT_* settings; return the admin token. A near miss of one of ours stops the
    node (a typo would otherwise be silently ignored); other unknown names only warn, because the
    environment is shared with the other edgedepot tools."""
    ours = [*_BY_ENV, ADMIN_TOKEN_ENV]
    for name in sorted(env):
        if not name.startswith("EDGEDEPOT_") or name in OTHER_TOOLS_ENV:
            continue
        if name in _BY_ENV:
            values[_BY_ENV[name].name] = _Value(env[name], name, True)
        elif name != ADMIN_TOKEN_ENV:
            close = difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"unknown environment variable {name} (did you mean {close[0]}?)")
            warnings.append(f"unknown environment variable {name} ignored")
    token = env.get(ADMIN_TOKEN_ENV)
    if token is not None and not token.strip():
        raise ConfigError(f"{ADMIN_TOKEN_ENV} is set but empty")
    return token.strip() if token is not None else None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(setting: Setting, value: _Value) -> Any:
    """The typed value of one setting; TOML types are strict, environment/flag text is parsed."""
    raw, where = value.raw, setting.key + _in(value.source)
    kind = setting.kind
    out: Any
    if kind == "size":
        if value.from_text and isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw)
        return parse_size(raw, where)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if value.from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {_type_name(raw)}")
    if kind == "list":
        if value.from_text and isinstance(raw, str):
            raw = [p for p in (x.strip() for x in raw.split(",")) if p]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"{where}: expected a list of strings, got {_type_name(raw)}")
        return tuple(raw)
    if kind == "str":
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected a string, got {_type_name(raw)}")
        out = raw.strip()
        if setting.choices and out.lower() not in setting.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(setting.choices)}, "
                              f"got {raw!r}")
        return out.lower() if setting.choices else out
    if isinstance(raw, bool) or not (isinstance(raw, int | float) or
                                     (value.from_text and isinstance(raw, str))):
        raise ConfigError(f"{where}: expected a number, got {_type_name(raw)}")
    try:
        out = int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected {'an integer' if kind == 'int' else 'a number'}, "
                          f"got {raw!r}") from None
    if kind == "int" and isinstance(raw, float):
        raise ConfigError(f"{where}: expected an integer, got {raw!r}")
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
    if out < 0:
        raise ConfigError(f"{where}: must not be negative, got {raw!r}")
    return out


def load_defaults() -> dict[str, Any]:
    text = resources.files("cache_node").joinpath("defaults.toml").read_text()
    return tomllib.loads(text)


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    apt_flags: Sequence[str] = (),
    pypi_flags: Sequence[str] = (),
) -> NodeConfig:
    """Merge every layer and validate the result: a new NodeConfig, or ConfigError."""
    values: dict[str, _Value] = {}
    repos: dict[str, dict[str, tuple[dict[str, Any], str]]] = {k: {} for k in REPO_KEYS}
    warnings: list[str] = []
    _walk_toml(load_defaults(), "defaults.toml", values, repos)
    if config_file is not None:
        try:
            file_tree = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{config_file}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from None
        _walk_toml(file_tree, str(config_file), values, repos)
    admin_token = _read_env(env or {}, values, warnings)
    for name, flag_value in (flags or {}).items():
        setting = _BY_NAME.get(name)
        if setting is None:
            raise ConfigError(f"unknown flag setting {name!r}")
        if flag_value is not None and flag_value != []:
            values[name] = _Value(flag_value, setting.flag, True)
    for kind, specs in (("apt", apt_flags), ("pypi", pypi_flags)):
        for spec in specs:
            repo = parse_repo_spec(spec, kind)
            repos[kind][repo.name] = ({"source": repo.source}, f"--{kind}")
    missing = [s.key for s in SETTINGS if s.name not in values]
    if missing:  # a packaging mistake, not an operator's
        raise ConfigError(f"defaults.toml lacks {', '.join(missing)}")
    typed = {name: _convert(_BY_NAME[name], value) for name, value in values.items()}
    where = {name: _BY_NAME[name].key + _in(value.source) for name, value in values.items()}
    return _validate(typed, where, repos, admin_token, warnings)


# --------------------------------------------------------------------------- validation


def _validate(v: dict[str, Any], where: dict[str, str],
              repos: dict[str, dict[str, tuple[dict[str, Any], str]]],
              admin_token: str | None, warnings: list[str]) -> NodeConfig:
    role: Role = v["role"]
    upstream = _url(v["upstream"], where["upstream"])
    if role == "cache" and upstream is None:
        raise ConfigError("role 'cache' needs an upstream URL (upstream, --upstream or "
                          "EDGEDEPOT_UPSTREAM)")
    if role == "origin" and upstream is not None:
        raise ConfigError("role 'origin' has no upstream; give per-repository URLs instead")
    listen, tls = _listeners(v, where)
    apt = tuple(_make_repo("apt", n, t, s) for n, (t, s) in sorted(repos["apt"].items()))
    pypi = tuple(_make_repo("pypi", n, t, s) for n, (t, s) in sorted(repos["pypi"].items()))
    glance = _glance(v, where, role, upstream)
    if role == "origin" and not apt and not pypi and not glance.enabled_on_origin:
        raise ConfigError("role 'origin' needs at least one --apt NAME=DIR|URL, --pypi NAME=..., "
                          "--images DIR or --glance-upstream URL")
    signing = _signing(v, where, role, warnings)
    if not v["store"]:
        raise ConfigError(f"{where['store']}: a directory is required")
    upstream_tls = _upstream_tls(v, where, warnings,
                                 [u for u in (upstream, glance.upstream_url) if u] +
                                 [r.source for r in apt + pypi if r.is_url])
    access_log = v["access_log"] or None
    if access_log is not None and access_log != "-":
        _check_writable_file(Path(access_log), where["access_log"])
    return NodeConfig(
        role=role,
        listen=listen,
        store_dir=Path(v["store"]),
        upstream=upstream,
        quota_bytes=v["quota"],
        index_ttl=v["index_ttl"],
        upstream_client=UpstreamSettings(
            connect_timeout=v["upstream_connect_timeout"],
            read_timeout=v["upstream_read_timeout"],
            retries=v["upstream_retries"],
            backoff=v["upstream_backoff"],
        ),
        signing=signing,
        apt=apt,
        pypi=pypi,
        log_level=v["log_level"],
        glance=glance,
        tls=tls,
        upstream_tls=upstream_tls,
        admin=_admin(v, where, admin_token, warnings),
        allow=tuple(parse_network(n, where["allow"]) for n in v["allow"]),
        trusted_proxies=tuple(parse_network(n, where["trusted_proxies"])
                              for n in v["trusted_proxies"]),
        drain_timeout=v["drain_timeout"],
        workers=_workers(v["workers"], where["workers"]),
        access_log=access_log,
        access_log_format=v["access_log_format"],
        warnings=tuple(warnings),
    )


def _workers(n: int, where: str) -> int:
    """0 means one worker per CPU core the process may run on."""
    if n == 0:
        return max(1, len(os.sched_getaffinity(0)))
    if n > 256:
        raise ConfigError(f"{where}: at most 256 worker processes, got {n}")
    return n


def _url(text: str, where: str) -> str | None:
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: expected an http(s) URL, got {text!r}")
    return text.rstrip("/") + "/"


def _glance(v: dict[str, Any], where: dict[str, str], role: Role,
            upstream: str | None) -> GlanceSettings:
    images = v["images"] or None
    glance_upstream = _url(v["glance_upstream"], where["glance_upstream"])
    if (images or glance_upstream) and role != "origin":
        raise ConfigError("glance.images / glance.upstream are origin settings; a cache serves "
                          "images from its --upstream node")
    if images is not None and not Path(images).is_dir():
        raise ConfigError(f"{where['images']}: directory {images} does not exist")
    settings = GlanceSettings(Path(images) if images else None, glance_upstream,
                              v["glance_auth_ttl"], v["glance_offline_policy"],
                              v["glance_enabled"], v["glance_forward_tokens_over_plain_http"])
    # Tokens never cross the network in clear unless the operator says so, by name.
    token_target = upstream if role == "cache" else (None if images else glance_upstream)
    if settings.enabled and token_target is not None and token_target.startswith("http://") \
            and not is_loopback_url(token_target) and not settings.forward_tokens_over_plain_http:
        key = "upstream" if role == "cache" else "glance.upstream"
        raise ConfigError(
            f"{key} {token_target} is plain http to a non-loopback host, so callers' Glance "
            "tokens would cross the network in clear: use https, or set "
            "glance.forward_tokens_over_plain_http = true "
            "(--glance-forward-tokens-over-plain-http) to allow it, "
            "or glance.enabled = false (--no-glance)")
    return settings


def _signing(v: dict[str, Any], where: dict[str, str], role: Role,
             warnings: list[str]) -> SigningSettings:
    home, key_id = v["signing_gnupg_home"], v["signing_key_id"]
    if bool(home) != bool(key_id):
        raise ConfigError("signing.gnupg_home (--gnupg-home) and signing.key_id (--signing-key) "
                          "must be given together")
    if not home:
        return SigningSettings()
    if not Path(home).is_dir():
        raise ConfigError(f"{where['signing_gnupg_home']}: GnuPG home {home} is not a directory")
    if "\n" in key_id or len(key_id) > 200:
        raise ConfigError(f"{where['signing_key_id']}: not a key id or user id: {key_id!r}")
    if role == "cache":
        warnings.append("signing.* is ignored on a cache (it serves its upstream's signatures)")
    return SigningSettings(Path(home), key_id)


def _listeners(v: dict[str, Any], where: dict[str, str]
               ) -> tuple[ListenAddress | None, TlsServerSettings]:
    tls_listen = parse_listen(v["tls_listen"], where["tls_listen"]) if v["tls_listen"] else None
    if v["listen"]:
        listen: ListenAddress | None = parse_listen(v["listen"], where["listen"])
    else:  # a node may listen on TLS only
        listen = None if tls_listen else parse_listen(DEFAULT_LISTEN, "listen")
    files = {name: v[name] for name in ("tls_cert", "tls_key", "tls_client_ca")}
    if tls_listen is None:
        given = [_BY_NAME[n].key for n, f in files.items() if f]
        if given:
            raise ConfigError(f"{', '.join(given)} set but tls.listen (--tls-listen) is not; "
                              "TLS is served only on tls.listen")
        return listen, TlsServerSettings()
    if listen is not None and listen == tls_listen and listen.port != 0:
        raise ConfigError(f"listen and tls.listen are the same address {listen}")
    if not files["tls_cert"] or not files["tls_key"]:
        raise ConfigError("tls.listen needs tls.cert and tls.key (--tls-cert, --tls-key)")
    cert, key = Path(files["tls_cert"]), Path(files["tls_key"])
    _check_pair(cert, key, where["tls_cert"], where["tls_key"])
    client_ca = Path(files["tls_client_ca"]) if files["tls_client_ca"] else None
    if client_ca is not None:
        _load_certs(client_ca, where["tls_client_ca"])
    return listen, TlsServerSettings(tls_listen, cert, key, client_ca)


def _upstream_tls(v: dict[str, Any], where: dict[str, str], warnings: list[str],
                  upstream_urls: Sequence[str]) -> UpstreamTlsSettings:
    ca = Path(v["upstream_ca"]) if v["upstream_ca"] else None
    cert = Path(v["upstream_client_cert"]) if v["upstream_client_cert"] else None
    key = Path(v["upstream_client_key"]) if v["upstream_client_key"] else None
    if ca is not None:
        _load_certs(ca, where["upstream_ca"])
    if (cert is None) != (key is None):
        raise ConfigError("upstream_tls.client_cert and upstream_tls.client_key "
                          "(--upstream-client-cert, --upstream-client-key) go together")
    if cert is not None and key is not None:
        _check_pair(cert, key, where["upstream_client_cert"], where["upstream_client_key"])
    if (ca or cert) and not any(u.startswith("https://") for u in upstream_urls):
        warnings.append("upstream_tls.* is set but no upstream uses https; it has no effect")
    return UpstreamTlsSettings(ca, cert, key)


def _admin(v: dict[str, Any], where: dict[str, str], env_token: str | None,
           warnings: list[str]) -> AdminSettings:
    token_file = Path(v["admin_token_file"]) if v["admin_token_file"] else None
    if token_file is None:
        return AdminSettings(None, env_token)
    if env_token is not None:
        raise ConfigError(f"give admin.token_file or {ADMIN_TOKEN_ENV}, not both")
    label = where["admin_token_file"]
    text = _read(token_file, label).decode("utf-8", "replace").strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"{label}: {token_file} must hold one token on one line")
    if _mode(token_file) & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"admin token file {token_file} is readable by group or others "
                        "(chmod 600 it)")
    return AdminSettings(token_file, text)


# --------------------------------------------------------------------------- files and PEM


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode
    except OSError:
        return 0


def _read(path: Path, where: str) -> bytes:
    try:
        if not path.exists():
            raise ConfigError(f"{where}: {path} does not exist")
        if not path.is_file():
            raise ConfigError(f"{where}: {path} is not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None


def _load_certs(path: Path, where: str) -> list[Any]:
    """Every certificate of a PEM file (a bundle); at least one."""
    from cryptography import x509

    data = _read(path, where)
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise ConfigError(f"{where}: {path} holds no PEM certificate") from None


def _check_pair(cert_path: Path, key_path: Path, cert_where: str, key_where: str) -> None:
    """The certificate parses, the key parses without a passphrase, and they belong together."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    certs = _load_certs(cert_path, cert_where)
    data = _read(key_path, key_where)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{key_where}: {key_path} is encrypted; the node needs a key without "
                          "a passphrase (protect it with file permissions)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key_where}: {key_path} holds no PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(f"{key_where}: {key_path} is not the key of certificate {cert_path}")
    expires = certs[0].not_valid_after_utc
    if expires < datetime.now(UTC):
        raise ConfigError(f"{cert_where}: certificate {cert_path} expired on "
                          f"{expires:%Y-%m-%d %H:%M} UTC")


def _check_writable_file(path: Path, where: str) -> None:
    """A file the node may append to: it is a writable file, or its directory is writable."""
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{where}: {path} is not a regular file")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: {path} is not writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{where}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: directory {parent} is not writable")


def client_settings(config: NodeConfig, read_timeout: float | None = None) -> ClientSettings:
    """How the node's HTTP clients reach its upstreams: timeouts, retries, the private CA added
    to the system trust and the client certificate (mTLS)."""
    u, t = config.upstream_client, config.upstream_tls
    return ClientSettings(connect_timeout=u.connect_timeout,
                          read_timeout=u.read_timeout if read_timeout is None else read_timeout,
                          retries=u.retries, backoff=u.backoff, ca_file=t.ca,
                          client_cert=t.client_cert, client_key=t.client_key)


DELTA_READ_TIMEOUT = 600.0  # a patch against a large basis may take minutes to compute


def delta_client_settings(config: NodeConfig) -> ClientSettings:
    """The node's client settings for delta fetches: the same trust and client certificate,
    with a read timeout long enough for the upstream to compute a patch; no retries (a broken
    delta transfer falls back to the whole fetch)."""
    settings = client_settings(config, read_timeout=max(config.upstream_client.read_timeout,
                                                        DELTA_READ_TIMEOUT))
    return replace(settings, retries=0)


# --------------------------------------------------------------------------- reload

# Settings a running node cannot change: the sockets it listens on, the store it opened, what
# kind of node it is and the repositories and key it built at start. A reload keeps them.
RESTART_ONLY = ("role", "listen", "store", "tls.listen", "signing.gnupg_home",
                "signing.key_id", "glance.enabled", "glance.images")


def settings_view(c: NodeConfig) -> dict[str, object]:
    """Every setting of a configuration under its TOML key: what a reload compares (a test
    checks that every key of `SETTINGS` is here)."""
    u, t, g = c.upstream_client, c.upstream_tls, c.glance
    view: dict[str, object] = {
        "role": c.role, "listen": c.listen, "store": c.store_dir, "upstream": c.upstream,
        "quota": c.quota_bytes, "log_level": c.log_level, "allow": c.allow,
        "trusted_proxies": c.trusted_proxies,
        "drain_timeout": c.drain_timeout, "workers": c.workers, "access_log": c.access_log,
        "access_log_format": c.access_log_format, "index.ttl": c.index_ttl,
        "upstream_client.connect_timeout": u.connect_timeout,
        "upstream_client.read_timeout": u.read_timeout,
        "upstream_client.retries": u.retries, "upstream_client.backoff": u.backoff,
        "upstream_tls.ca": t.ca, "upstream_tls.client_cert": t.client_cert,
        "upstream_tls.client_key": t.client_key,
        "tls.listen": c.tls.listen, "tls.cert": c.tls.cert, "tls.key": c.tls.key,
        "tls.client_ca": c.tls.client_ca,
        "admin.token_file": c.admin.token_file, "admin token": c.admin.token,
        "signing.gnupg_home": c.signing.gnupg_home, "signing.key_id": c.signing.key_id,
        "glance.enabled": g.enabled, "glance.images": g.images_dir,
        "glance.upstream": g.upstream_url, "glance.auth_ttl": g.auth_ttl,
        "glance.offline_policy": g.offline_policy,
        "glance.forward_tokens_over_plain_http": g.forward_tokens_over_plain_http,
    }
    for repo in c.apt:
        view[f"apt.{repo.name}"] = (repo.source, repo.suite)
    for repo in c.pypi:
        view[f"pypi.{repo.name}"] = repo.source
    return view


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload applies: the loaded configuration with every setting that needs a restart
    kept at its running value; `changed` lists what takes effect, `needs_restart` what the
    file changed but the node keeps until it restarts (both as TOML keys)."""

    config: NodeConfig
    changed: tuple[str, ...]
    needs_restart: tuple[str, ...]


def _kept_repos(running: tuple[RepoSource, ...], loaded: tuple[RepoSource, ...]
                ) -> tuple[RepoSource, ...]:
    """A mirrored repository may move to another URL; adding, removing or rebuilding one from
    another directory needs a restart."""
    if [r.name for r in running] != [r.name for r in loaded]:
        return running
    return tuple(new if old.is_url and new.is_url else old for old, new in zip(running, loaded, strict=True))


def plan_reload(running: NodeConfig, loaded: NodeConfig) -> ReloadPlan:
    """Compare a freshly loaded configuration with the running one (pure)."""
    tls = replace(loaded.tls, listen=running.tls.listen) \
        if running.tls.enabled and loaded.tls.enabled else running.tls
    glance = replace(
        loaded.glance, enabled=running.glance.enabled, images_dir=running.glance.images_dir,
        upstream_url=loaded.glance.upstream_url
        if (loaded.glance.upstream_url is None) == (running.glance.upstream_url is None)
        else running.glance.upstream_url)
    upstream = loaded.upstream \
        if (loaded.upstream is None) == (running.upstream is None) else running.upstream
    # The access log's middleware is installed at start: it may move, not come or go.
    access_log = loaded.access_log \
        if (loaded.access_log is None) == (running.access_log is None) else running.access_log
    effective = replace(loaded, role=running.role, listen=running.listen, workers=running.workers,
                        store_dir=running.store_dir, signing=running.signing, tls=tls,
                        glance=glance, upstream=upstream, access_log=access_log,
                        apt=_kept_repos(running.apt, loaded.apt),
                        pypi=_kept_repos(running.pypi, loaded.pypi))
    before, want, after = settings_view(running), settings_view(loaded), settings_view(effective)
    keys = sorted(before.keys() | want.keys())
    changed = tuple(k for k in keys if before.get(k) != after.get(k))
    kept = tuple(k for k in keys if want.get(k) != after.get(k))
    return ReloadPlan(effective, changed, kept)
