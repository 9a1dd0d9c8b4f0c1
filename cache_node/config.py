"""Node configuration: packaged defaults < TOML file < EDGEDEPOT_* environment < flags.

Everything is validated once, at start, into one frozen `NodeConfig`. Nothing here reads the
environment at import time; `load_config` receives the environment mapping explicitly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from distro.sizes import SizeError, parse_size
from syncer.http_client import ClientSettings

Role = Literal["origin", "cache"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is wrong."""


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

    @property
    def enabled_on_origin(self) -> bool:
        return self.images_dir is not None or self.upstream_url is not None


@dataclass(frozen=True)
class NodeConfig:
    role: Role
    listen_host: str
    listen_port: int
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

    def apt_repo(self, name: str) -> RepoSource | None:
        return next((r for r in self.apt if r.name == name), None)

    def pypi_repo(self, name: str) -> RepoSource | None:
        return next((r for r in self.pypi if r.name == name), None)


# Flat keys that may come from the environment or flags: key -> (section, field).
_FLAT_KEYS: dict[str, tuple[str | None, str]] = {
    "role": (None, "role"),
    "listen": (None, "listen"),
    "store": (None, "store"),
    "upstream": (None, "upstream"),
    "quota": (None, "quota"),
    "log_level": (None, "log_level"),
    "index_ttl": ("index", "ttl"),
    "upstream_connect_timeout": ("upstream_client", "connect_timeout"),
    "upstream_read_timeout": ("upstream_client", "read_timeout"),
    "upstream_retries": ("upstream_client", "retries"),
    "upstream_backoff": ("upstream_client", "backoff"),
    "signing_gnupg_home": ("signing", "gnupg_home"),
    "signing_key_id": ("signing", "key_id"),
    "images": ("glance", "images"),
    "glance_upstream": ("glance", "upstream"),
    "glance_auth_ttl": ("glance", "auth_ttl"),
    "glance_offline_policy": ("glance", "offline_policy"),
}
FLAT_KEYS: tuple[str, ...] = tuple(_FLAT_KEYS)


def parse_repo_spec(spec: str, kind: str) -> RepoSource:
    """Parse a `NAME=DIR` or `NAME=URL` flag value."""
    if "=" not in spec:
        raise ConfigError(f"--{kind} {spec!r}: expected NAME=DIR or NAME=URL")
    name, source = spec.split("=", 1)
    return _make_repo(kind, name.strip(), {"source": source.strip()})


def _make_repo(kind: str, name: str, table: Mapping[str, Any]) -> RepoSource:
    if not _NAME_RE.match(name):
        raise ConfigError(f"{kind}.{name}: repository names are letters, digits, '.', '_', '-'")
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"{kind}.{name}.source: required (a directory or an http(s) URL)")
    suite = table.get("suite", "stable")
    if not isinstance(suite, str) or not _NAME_RE.match(suite):
        raise ConfigError(f"{kind}.{name}.suite: invalid suite name {suite!r}")
    unknown = set(table) - {"source", "suite"}
    if unknown:
        raise ConfigError(f"{kind}.{name}: unknown keys {sorted(unknown)}")
    if source.startswith(("http://", "https://")):
        if not urlsplit(source).netloc:
            raise ConfigError(f"{kind}.{name}.source: URL without host: {source!r}")
        if not source.endswith("/"):
            source += "/"
    return RepoSource(name=name, source=source, suite=suite)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_flat(tree: dict[str, Any], key: str, value: Any) -> None:
    section, field = _FLAT_KEYS[key]
    if section is None:
        tree[field] = value
    else:
        tree.setdefault(section, {})[field] = value


def _number(tree: Mapping[str, Any], section: str, field: str, kind: type) -> Any:
    raw = tree.get(section, {}).get(field)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{field}: expected a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{section}.{field}: must not be negative")
    return value


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
    """Merge every layer and validate the result."""
    tree = load_defaults()
    if config_file is not None:
        try:
            file_tree = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from None
        tree = _deep_merge(tree, file_tree)
    for key in _FLAT_KEYS:
        env_value = (env or {}).get("EDGEDEPOT_" + key.upper())
        if env_value is not None:
            _set_flat(tree, key, env_value)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_flat(tree, key, value)
    for kind, specs in (("apt", apt_flags), ("pypi", pypi_flags)):
        for spec in specs:
            repo = parse_repo_spec(spec, kind)
            tree.setdefault(kind, {})[repo.name] = {"source": repo.source}
    return validate(tree)


def validate(tree: Mapping[str, Any]) -> NodeConfig:
    known = {"role", "listen", "store", "upstream", "quota", "log_level", "index",
             "upstream_client", "signing", "apt", "pypi", "glance"}
    unknown = set(tree) - known
    if unknown:
        raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
    role = tree.get("role")
    if role not in ("origin", "cache"):
        raise ConfigError(f"role: must be 'origin' or 'cache', got {role!r}")
    listen = str(tree.get("listen", ""))
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    upstream = str(tree.get("upstream") or "") or None
    if upstream is not None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"upstream: expected an http(s) URL, got {upstream!r}")
        upstream = upstream.rstrip("/") + "/"
    if role == "cache" and upstream is None:
        raise ConfigError("role 'cache' needs an upstream URL (--upstream or EDGEDEPOT_UPSTREAM)")
    if role == "origin" and upstream is not None:
        raise ConfigError("role 'origin' has no upstream; give per-repository URLs instead")
    apt = tuple(_make_repo("apt", n, t) for n, t in sorted(dict(tree.get("apt", {})).items()))
    pypi = tuple(_make_repo("pypi", n, t) for n, t in sorted(dict(tree.get("pypi", {})).items()))
    glance = _glance_settings(dict(tree.get("glance", {})), role)
    if role == "origin" and not apt and not pypi and not glance.enabled_on_origin:
        raise ConfigError("role 'origin' needs at least one --apt NAME=DIR|URL, --pypi NAME=..., "
                          "--images DIR or --glance-upstream URL")
    for repo in apt + pypi:
        if not repo.is_url and not repo.path.is_dir():
            raise ConfigError(f"{repo.name}: source directory {repo.source} does not exist")
    signing_tree = dict(tree.get("signing", {}))
    gnupg_home = str(signing_tree.get("gnupg_home") or "")
    signing = SigningSettings(
        gnupg_home=Path(gnupg_home) if gnupg_home else None,
        key_id=str(signing_tree.get("key_id") or ""),
    )
    if bool(signing.gnupg_home) != bool(signing.key_id):
        raise ConfigError("signing: gnupg_home and key_id must be given together")
    store = str(tree.get("store") or "")
    if not store:
        raise ConfigError("store: a directory is required")
    log_level = str(tree.get("log_level", "info")).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: unknown level {log_level!r}")
    try:
        quota_bytes = parse_size(tree.get("quota"))
    except SizeError as exc:
        raise ConfigError(str(exc)) from None
    return NodeConfig(
        role=role,
        listen_host=host.strip("[]"),
        listen_port=int(port_text),
        store_dir=Path(store),
        upstream=upstream,
        quota_bytes=quota_bytes,
        index_ttl=float(_number(tree, "index", "ttl", float)),
        upstream_client=UpstreamSettings(
            connect_timeout=_number(tree, "upstream_client", "connect_timeout", float),
            read_timeout=_number(tree, "upstream_client", "read_timeout", float),
            retries=_number(tree, "upstream_client", "retries", int),
            backoff=_number(tree, "upstream_client", "backoff", float),
        ),
        signing=signing,
        apt=apt,
        pypi=pypi,
        log_level=log_level,
        glance=glance,
    )


def _glance_settings(table: dict[str, Any], role: str) -> GlanceSettings:
    unknown = set(table) - {"images", "upstream", "auth_ttl", "offline_policy"}
    if unknown:
        raise ConfigError(f"glance: unknown keys {sorted(unknown)}")
    images = str(table.get("images") or "") or None
    upstream = str(table.get("upstream") or "") or None
    if (images or upstream) and role != "origin":
        raise ConfigError("glance.images / glance.upstream are origin settings; a cache serves "
                          "images from its --upstream node")
    if images is not None and not Path(images).is_dir():
        raise ConfigError(f"glance.images: directory {images} does not exist")
    if upstream is not None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"glance.upstream: expected an http(s) URL, got {upstream!r}")
        upstream = upstream.rstrip("/") + "/"
    policy = str(table.get("offline_policy", "public"))
    if policy not in ("public", "none", "cached"):
        raise ConfigError(f"glance.offline_policy: 'public', 'none' or 'cached', not {policy!r}")
    try:
        ttl = float(table.get("auth_ttl", 30.0))
    except (TypeError, ValueError):
        raise ConfigError("glance.auth_ttl: expected a number of seconds") from None
    if ttl < 0:
        raise ConfigError("glance.auth_ttl: must not be negative")
    return GlanceSettings(Path(images) if images else None, upstream, ttl, policy)


def client_settings(config: NodeConfig) -> ClientSettings:
    """How the node's HTTP clients reach its upstream (timeouts, retries, TLS trust)."""
    u = config.upstream_client
    return ClientSettings(connect_timeout=u.connect_timeout, read_timeout=u.read_timeout,
                          retries=u.retries, backoff=u.backoff)
