"""The fleet inventory (TOML): origin, regions with their cache nodes, site profiles, sites.

```toml
origin = "https://origin.example:8443"

# How distro-sync reaches the nodes (all optional):
admin_token_file = "/etc/edgedepot/fleet-admin.token"  # default bearer token for admin calls
ca_file = "/etc/edgedepot/fleet-ca.pem"   # private CA trusted in addition to the system's
client_cert = "/etc/edgedepot/scheduler.pem"  # client certificate for mTLS nodes,
client_key = "/etc/edgedepot/scheduler.key"   # with its key (no passphrase)

[regions.eu-west]
parent = "https://cache-eu.example:8443"        # talks to the origin
children = ["https://cache-eu-2.example:8443"]  # talk to the parent
bandwidth = "40M"                              # bytes/s each node may pull for a plan
concurrency = 4
admin_token_file = "/etc/edgedepot/eu-west.token"  # this region's nodes (overrides the default)
[regions.eu-west.node_token_files]             # single nodes (override the region's)
"https://cache-eu-2.example:8443" = "/etc/edgedepot/cache-eu-2.token"

[regions.us-east]                              # a sibling tier behind HAProxy
front = "http://cache-us.example:80"           # what sites use: HAProxy in front of the siblings
siblings = ["https://10.2.0.11:8443", "https://10.2.0.12:8443", "https://10.2.0.13:8443"]
[regions.us-east.lb]                           # optional; these are the defaults
hash = "sdbm avalanche"                        # hash-type consistent <function> [avalanche]
bind = "cache-us.example:80"                   # HAProxy's bind (default: the front's host:port)
check_interval = 2.0                           # seconds between health checks of /healthz

[profiles.compute]
apt = { repo = "main", suite = "stable", packages = ["nova-compute"], recommends = true }
pip = { index = "local", requirements = ["edge-agent>=2"] }
images = ["cirros-0.6"]

[sites.site-001]
region = "eu-west"
profile = "compute"
addresses = ["10.1.7.0/28"]   # optional: where its requests come from (see the console)
```

Console and onboarding (all optional; see `distro-sync console --help`):

```toml
console_url = "http://mgmt.example:8090"   # where bootstrapped sites report (the console)
onboarding_token_file = "tokens/onboarding.token"  # sites send it when they report
repository_key = "03B7 9093 ... 4AB6"     # the key fingerprint sites pin (default: the
                                           # origin's, read from its /keys/ when generating)
[regions.eu-west]
site_url = "http://cache-eu.example:8080"  # what the region's sites use (default: the
                                           # sibling tier's front, else the parent)
```

A region has a `parent` (optional when it has siblings), `children` that pull from the parent,
and/or `siblings`: nodes behind one HAProxy `front` that routes each request by consistent
hashing of its path, so each artifact lives on one sibling (`distro-sync lb-config` writes
that HAProxy's configuration, and `push` gives each sibling the share HAProxy will send it). A
sibling is a URL, or a table that pins what its ring position derives from:

```toml
[[regions.us-east.siblings]]
url = "https://10.2.0.11:8443"
name = "us-a"      # HAProxy server name, sent to clients as X-Edgedepot-Sibling (default: host:port)
id = 11            # HAProxy server id; its ring points derive from it (default: from the name)
weight = 100       # 1-256: 16 ring points per unit (default 100)
```

Ids default to a hash of the name rather than the position, so adding, removing or reordering
siblings moves only the shares of the siblings added or removed.

Admin tokens: the nodes' `/admin/...` calls (push, status, sync, and `plan` asking what nodes
hold) carry `Authorization: Bearer TOKEN`, the token taken from the most specific of: the
node's entry in `node_token_files`, the region's `admin_token_file`, the top-level
`admin_token_file`, the `EDGEDEPOT_ADMIN_TOKEN` environment variable. A token file holds one
token on one line; relative paths are relative to the inventory file. Tokens are read when the
inventory is loaded (a missing or malformed file is an error naming the key) and never
printed. A token bound for a plain-`http://` node that is not on this host is sent, with a
warning: use https across networks. `ca_file` and `client_cert`/`client_key` apply to every
connection the scheduler makes (the origin's indexes and every node).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import ssl
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from distro.sizes import parse_size
from syncer.chash import MAX_ID, MAX_WEIGHT, HashSpec
from syncer.http_client import ClientSettings, ssl_context

ADMIN_TOKEN_ENV = "EDGEDEPOT_ADMIN_TOKEN"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # HAProxy identifier characters
DEFAULT_SIBLING_WEIGHT = 100  # HAProxy's default (1) puts 16 points per server on the ring:
                              # shares of 3 siblings could differ twofold


class InventoryError(ValueError):
    """The inventory is invalid; the message names the entry and what is wrong."""


@dataclass(frozen=True)
class Sibling:
    """One node of a region's sibling tier, as HAProxy and the scheduler both see it."""

    url: str     # where HAProxy and the scheduler reach the node
    name: str    # HAProxy server name (X-Edgedepot-Sibling in responses through the front)
    id: int      # HAProxy server id: the ring points derive from it
    weight: int  # 16 ring points per unit


@dataclass(frozen=True)
class Front:
    """HAProxy in front of a region's siblings."""

    url: str                   # what sites use
    bind: str                  # HOST:PORT HAProxy listens on
    hash: HashSpec
    check_interval: float      # seconds between health checks


@dataclass(frozen=True)
class Region:
    name: str
    parent: str | None
    children: tuple[str, ...]
    bandwidth: int | None
    concurrency: int
    admin_token_file: Path | None = None
    node_token_files: tuple[tuple[str, Path], ...] = ()  # (node URL, file)
    siblings: tuple[Sibling, ...] = ()
    front: Front | None = None
    site_url: str | None = None  # the address sites use, when it is not the default

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node the scheduler talks to: parent, children, siblings."""
        head = (self.parent,) if self.parent else ()
        return (*head, *self.children, *(s.url for s in self.siblings))

    def role_of(self, node: str) -> str:
        if node == self.parent:
            return "parent"
        return "child" if node in self.children else "sibling"

    @property
    def front_door(self) -> str:
        """The base URL this region's sites use: `site_url`, else the sibling tier's front,
        else the parent."""
        door = self.site_url or (self.front.url if self.front else None) or self.parent
        assert door is not None  # a region has a parent or siblings behind a front
        return door


@dataclass(frozen=True)
class AptProfile:
    repo: str
    suite: str
    packages: tuple[str, ...]
    recommends: bool
    arch: str
    components: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class PipProfile:
    index: str
    requirements: tuple[str, ...]
    python_version: str
    platform: str


@dataclass(frozen=True)
class Profile:
    name: str
    apt: AptProfile | None
    pip: PipProfile | None
    images: tuple[str, ...]


@dataclass(frozen=True)
class Site:
    name: str
    region: str
    profile: str
    # where the site's requests come from: the console attributes downloads by address
    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class FleetTls:
    """Files the scheduler's HTTPS connections use (None: system trust, no client cert)."""

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class Onboarding:
    """What bootstrapped sites are told: where to report, with which token, which key to pin."""

    console_url: str | None = None
    token: str | None = field(default=None, repr=False)
    repository_key: str | None = None  # fingerprint, 40 upper-case hex digits


@dataclass(frozen=True)
class Inventory:
    origin: str
    regions: dict[str, Region]
    profiles: dict[str, Profile]
    sites: dict[str, Site]
    tls: FleetTls = FleetTls()
    # node URL -> admin token, resolved for every node that has one (never printed)
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()
    onboarding: Onboarding = Onboarding()

    def admin_token(self, node: str) -> str | None:
        """The bearer token for `node`'s admin calls (None: send none)."""
        return self.tokens.get(node.rstrip("/"))

    def client_settings(self, base: ClientSettings | None = None) -> ClientSettings:
        """`base` (timeouts) with this inventory's CA and client certificate."""
        return dataclasses.replace(base or ClientSettings(), ca_file=self.tls.ca_file,
                                   client_cert=self.tls.client_cert,
                                   client_key=self.tls.client_key)

    def sites_in(self, region: str) -> list[Site]:
        return [s for s in self.sites.values() if s.region == region]

    def profiles_of(self, region: str) -> list[Profile]:
        names = sorted({s.profile for s in self.sites_in(region)})
        return [self.profiles[n] for n in names]


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InventoryError(f"{where}: expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InventoryError(f"{where}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InventoryError(f"{where}: expected a list of strings")
    return tuple(value)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise InventoryError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"


def _path(value: Any, where: str, base_dir: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: expected a file path")
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def read_token_file(path: Path, where: str) -> str:
    """The one token a token file holds; InventoryError naming `where` otherwise."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InventoryError(f"{where}: cannot read token file {path}: {reason}") from None
    if not text or any(c.isspace() for c in text):
        raise InventoryError(f"{where}: token file {path} must hold one token on one line")
    return text


def _default_server_name(url: str) -> str:
    """host:port, with what HAProxy does not allow in a name (IPv6 colons too) as '-'."""
    parts = urlsplit(url)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", parts.hostname or "")
    if not host[:1].isalnum():
        host = f"ip{host}"
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"[-64:]


def _sibling(item: Any, where: str) -> Sibling:
    table = {"url": item} if isinstance(item, str) else item
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: a URL or a table with url, name, id, weight")
    _check_keys(table, {"url", "name", "id", "weight"}, where)
    url = _url(table.get("url"), f"{where}.url")
    name = table.get("name", _default_server_name(url))
    if not isinstance(name, str) or not _SERVER_NAME.match(name):
        raise InventoryError(f"{where}.name: letters, digits and . _ : - (at most 64), "
                             f"got {name!r}")
    sid = table.get("id", 1 + zlib.crc32(name.encode()) % MAX_ID)
    if isinstance(sid, bool) or not isinstance(sid, int) or not 1 <= sid <= MAX_ID:
        raise InventoryError(f"{where}.id: an integer from 1 to {MAX_ID}")
    weight = table.get("weight", DEFAULT_SIBLING_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise InventoryError(f"{where}.weight: an integer from 1 to {MAX_WEIGHT}")
    return Sibling(url, name, sid, weight)


def _siblings(table: dict[str, Any], where: str) -> tuple[tuple[Sibling, ...], Front | None]:
    raw = table.get("siblings")
    if raw is None:
        for key in ("front", "lb"):
            if key in table:
                raise InventoryError(f"{where}.{key}: only for a region with siblings")
        return (), None
    if not isinstance(raw, list) or not raw:
        raise InventoryError(f"{where}.siblings: a non-empty list of URLs or tables")
    siblings = tuple(_sibling(item, f"{where}.siblings[{i}]") for i, item in enumerate(raw))
    for attr in ("url", "name", "id"):
        seen: dict[Any, int] = {}
        for i, sib in enumerate(siblings):
            value = getattr(sib, attr)
            if value in seen:
                hint = " (ids default to a hash of the name: give one of them an explicit id)" \
                    if attr == "id" else ""
                raise InventoryError(f"{where}.siblings[{i}]: {attr} {value!r} is also "
                                     f"siblings[{seen[value]}]'s{hint}")
            seen[value] = i
    if "front" not in table:
        raise InventoryError(f"{where}.front: the URL sites use to reach the siblings "
                             "(HAProxy in front of them)")
    front_url = _url(table["front"], f"{where}.front")
    lb = table.get("lb", {})
    if not isinstance(lb, dict):
        raise InventoryError(f"{where}.lb: expected a table")
    _check_keys(lb, {"hash", "bind", "check_interval"}, f"{where}.lb")
    try:
        hash_spec = HashSpec.parse(str(lb.get("hash", "sdbm avalanche")))
    except ValueError as exc:
        raise InventoryError(f"{where}.lb.hash: {exc}") from None
    parts = urlsplit(front_url)
    default_port = 443 if parts.scheme == "https" else 80
    bind = lb.get("bind", f"{parts.hostname}:{parts.port or default_port}")
    if not isinstance(bind, str) or not re.fullmatch(r"[^\s:]*:[0-9]{1,5}|\[[0-9a-fA-F:.]+\]:[0-9]{1,5}",
                                                    bind):
        raise InventoryError(f"{where}.lb.bind: HOST:PORT, got {bind!r}")
    interval = lb.get("check_interval", 2.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not 0.1 <= interval <= 600:
        raise InventoryError(f"{where}.lb.check_interval: seconds from 0.1 to 600")
    return siblings, Front(front_url, bind, hash_spec, float(interval))


def _region(name: str, table: Any, base_dir: Path) -> Region:
    where = f"regions.{name}"
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: expected a table")
    _check_keys(table, {"parent", "children", "bandwidth", "concurrency", "admin_token_file",
                        "node_token_files", "siblings", "front", "lb", "site_url"}, where)
    try:
        bandwidth = parse_size(table.get("bandwidth"), f"{where}.bandwidth")
    except ValueError as exc:
        raise InventoryError(str(exc)) from None
    concurrency = table.get("concurrency", 4)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise InventoryError(f"{where}.concurrency: an integer from 1 to 64")
    children = tuple(_url(c, f"{where}.children") for c in _strings(table.get("children"),
                                                                        f"{where}.children"))
    siblings, front = _siblings(table, where)
    if "parent" not in table and not siblings:
        raise InventoryError(f"{where}: needs a parent or siblings")
    parent = _url(table["parent"], f"{where}.parent") if "parent" in table else None
    if children and parent is None:
        raise InventoryError(f"{where}.children: children pull from a parent; give one")
    nodes = [n for n in (parent, *children, *(s.url for s in siblings)) if n]
    if len(set(nodes)) != len(nodes):
        twice = sorted({n for n in nodes if nodes.count(n) > 1})
        raise InventoryError(f"{where}: {', '.join(twice)} named more than once")
    node_files = table.get("node_token_files", {})
    if not isinstance(node_files, dict):
        raise InventoryError(f"{where}.node_token_files: expected a table of node URL = file")
    per_node: list[tuple[str, Path]] = []
    for node, value in node_files.items():
        url = _url(node, f"{where}.node_token_files")
        if url not in nodes:
            raise InventoryError(f"{where}.node_token_files: {node!r} is not a node of this "
                                 f"region{_suggest(url, nodes)}")
        path = _path(value, f"{where}.node_token_files.{node!r}", base_dir)
        assert path is not None
        per_node.append((url, path))
    site_url = _url(table["site_url"], f"{where}.site_url") if "site_url" in table else None
    return Region(name, parent, children, bandwidth, concurrency,
                  _path(table.get("admin_token_file"), f"{where}.admin_token_file", base_dir),
                  tuple(per_node), siblings, front, site_url)


def _tokens(tree: dict[str, Any], regions: dict[str, Region], base_dir: Path,
            env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Every node's admin token, most specific source first; warnings for plain-http hops."""
    read: dict[Path, str] = {}

    def token(path: Path, where: str) -> str:
        if path not in read:
            read[path] = read_token_file(path, where)
        return read[path]

    default_file = _path(tree.get("admin_token_file"), "admin_token_file", base_dir)
    default = token(default_file, "admin_token_file") if default_file else None
    if default is None and env.get(ADMIN_TOKEN_ENV, "").strip():
        default = env[ADMIN_TOKEN_ENV].strip()
    tokens: dict[str, str] = {}
    warnings: list[str] = []
    for region in regions.values():
        where = f"regions.{region.name}"
        region_token = token(region.admin_token_file, f"{where}.admin_token_file") \
            if region.admin_token_file else default
        per_node = dict(region.node_token_files)
        for node in region.nodes:
            node_token = token(per_node[node], f"{where}.node_token_files.{node!r}") \
                if node in per_node else region_token
            if node_token is None:
                continue
            tokens[node] = node_token
            if node.startswith("http://") and not _is_local(node):
                warnings.append(f"the admin token for {node} crosses the network in clear "
                                "(plain http); use https")
    return tokens, warnings


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls(tree: dict[str, Any], base_dir: Path) -> FleetTls:
    tls = FleetTls(*(_path(tree.get(k), k, base_dir)
                     for k in ("ca_file", "client_cert", "client_key")))
    if (tls.client_cert is None) != (tls.client_key is None):
        raise InventoryError("client_cert and client_key go together")
    for key in ("ca_file", "client_cert", "client_key"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            raise InventoryError(f"{key}: {path} does not exist")
    try:  # what every connection will do: fail here, in one line, not in the middle of a push
        ssl_context(ClientSettings(ca_file=tls.ca_file, client_cert=tls.client_cert,
                                   client_key=tls.client_key))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise InventoryError(f"ca_file/client_cert/client_key: cannot use them for TLS: "
                             f"{exc}") from None
    return tls


def _profile(name: str, table: Any) -> Profile:
    where = f"profiles.{name}"
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: expected a table")
    _check_keys(table, {"apt", "pip", "images"}, where)
    apt = None
    if "apt" in table:
        t = table["apt"]
        if not isinstance(t, dict):
            raise InventoryError(f"{where}.apt: expected a table")
        _check_keys(t, {"repo", "suite", "packages", "recommends", "arch", "components"},
                    f"{where}.apt")
        packages = _strings(t.get("packages"), f"{where}.apt.packages")
        if not packages:
            raise InventoryError(f"{where}.apt.packages: at least one package")
        components = _strings(t.get("components", ["main"]), f"{where}.apt.components")
        if not components or not all(_NAME.match(c) for c in components):
            raise InventoryError(f"{where}.apt.components: a list of component names")
        apt = AptProfile(str(t.get("repo", "main")), str(t.get("suite", "stable")), packages,
                         bool(t.get("recommends", True)), str(t.get("arch", "amd64")),
                         components)
    pip = None
    if "pip" in table:
        t = table["pip"]
        if not isinstance(t, dict):
            raise InventoryError(f"{where}.pip: expected a table")
        _check_keys(t, {"index", "requirements", "python_version", "platform"}, f"{where}.pip")
        requirements = _strings(t.get("requirements"), f"{where}.pip.requirements")
        if not requirements:
            raise InventoryError(f"{where}.pip.requirements: at least one requirement")
        pip = PipProfile(str(t.get("index", "local")), requirements,
                         str(t.get("python_version", "3.11")),
                         str(t.get("platform", "manylinux_2_36_x86_64")))
    images = _strings(table.get("images"), f"{where}.images")
    if apt is None and pip is None and not images:
        raise InventoryError(f"{where}: names no apt packages, pip requirements or images")
    return Profile(name, apt, pip, images)


def parse_inventory(tree: dict[str, Any], base_dir: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Inventory:
    """`base_dir`: where relative file paths start (the inventory's directory); `env`: where
    `EDGEDEPOT_ADMIN_TOKEN` is looked up (nowhere when None)."""
    base_dir = base_dir or Path.cwd()
    _check_keys(tree, {"origin", "regions", "profiles", "sites", "admin_token_file",
                       "ca_file", "client_cert", "client_key", "console_url",
                       "onboarding_token_file", "repository_key"}, "inventory")
    origin = _url(tree.get("origin"), "origin")
    regions: dict[str, Region] = {}
    for name, table in dict(tree.get("regions", {})).items():
        if not _NAME.match(name):
            raise InventoryError(f"regions.{name}: invalid name")
        regions[name] = _region(name, table, base_dir)
    if not regions:
        raise InventoryError("regions: at least one region")
    profiles = {name: _profile(name, t) for name, t in dict(tree.get("profiles", {})).items()}
    sites: dict[str, Site] = {}
    for name, table in dict(tree.get("sites", {})).items():
        where = f"sites.{name}"
        if not isinstance(table, dict):
            raise InventoryError(f"{where}: expected a table")
        _check_keys(table, {"region", "profile", "addresses"}, where)
        region, profile = str(table.get("region", "")), str(table.get("profile", ""))
        if region not in regions:
            raise InventoryError(f"{where}: unknown region {region!r}{_suggest(region, sorted(regions))}")
        if profile not in profiles:
            raise InventoryError(
                f"{where}: unknown profile {profile!r}{_suggest(profile, sorted(profiles))}")
        sites[name] = Site(name, region, profile,
                           _networks(table.get("addresses"), f"{where}.addresses"))
    tokens, warnings = _tokens(tree, regions, base_dir, env or {})
    return Inventory(origin, regions, profiles, sites, _tls(tree, base_dir), tokens,
                     tuple(warnings), _onboarding(tree, base_dir))


def _networks(value: Any, where: str
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for text in _strings(value, where):
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}") from None
    return tuple(out)


_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


def _onboarding(tree: dict[str, Any], base_dir: Path) -> Onboarding:
    console = _url(tree["console_url"], "console_url") if "console_url" in tree else None
    token_file = _path(tree.get("onboarding_token_file"), "onboarding_token_file", base_dir)
    token = read_token_file(token_file, "onboarding_token_file") if token_file else None
    key = tree.get("repository_key")
    if key is not None:
        key = re.sub(r"\s+", "", str(key)).upper()
        if not _FINGERPRINT.match(key):
            raise InventoryError("repository_key: a key fingerprint (40 hex digits, spaces "
                                 "allowed)")
    return Onboarding(console, token, key)


def load_inventory(path: Path, env: Mapping[str, str] | None = None) -> Inventory:
    try:
        tree = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: invalid TOML: {exc}") from None
    return parse_inventory(tree, path.resolve().parent, env)


def suggest_package(name: str, known: list[str]) -> str:
    """A message fragment naming the closest known package names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (closest: {', '.join(close)})" if close else ""
