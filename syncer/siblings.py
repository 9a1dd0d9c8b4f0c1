"""A region's sibling tier behind HAProxy: its configuration, and who serves which artifact.

HAProxy routes each request to one sibling by consistent hashing of its path, so each artifact
is fetched over the WAN by one sibling only. Two backends share the same servers:

- `R_siblings` hashes the whole path (`balance uri path-only`): every pool file, pip file and
  image lives on the sibling its own path hashes to;
- `R_indexes` hashes `/apt/<repo>/dists/<suite>` (`depth 4`) for apt index paths, so one
  sibling serves a suite's `InRelease` and every index file it lists: apt gets one consistent
  snapshot, and the index crosses the WAN once per region, not once per sibling. Its servers
  `track` the first backend's, so one health check decides for both.

`push` computes the same mapping (`syncer.chash`) for the path each client will request, and
gives each sibling that is up the share it will serve. Responses through the front carry
`X-Edgedepot-Sibling: <server name>`, and `GET /_edgedepot/front` is answered by HAProxy itself
with the state of each sibling as HAProxy sees it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from distro.wire import PlanArtifact, PlanSpec
from syncer.chash import Ring, RingServer, UriKey
from syncer.fleet import FRONT_STATUS_PATH
from syncer.inventory import Region, Sibling

__all__ = ["FRONT_STATUS_PATH", "SIBLING_HEADER", "SiblingMap", "client_path", "haproxy_config",
           "split_plan"]

SIBLING_HEADER = "X-Edgedepot-Sibling"
INDEX_DEPTH = 4  # /apt/<repo>/dists/<suite>
INDEX_PATH = re.compile(r"^/apt/[^/]+/dists/")
_APT_UNSAFE = frozenset(b"+~ %")


def apt_quote(path: str) -> str:
    """A path as apt (2.6) puts it on the request line: `QuoteString(path, "+~ ")`, i.e. `+`,
    `~`, space, `%`, control and non-ASCII bytes as lower-case %xx."""
    out = []
    for byte in path.encode():
        if byte in _APT_UNSAFE or byte <= 0x20 or byte >= 0x7F:
            out.append(f"%{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def client_path(artifact: PlanArtifact) -> str:
    """The request path a site's client sends for an artifact (what HAProxy hashes)."""
    if artifact.kind == "apt":
        return f"/apt/{apt_quote(artifact.repo)}/{apt_quote(artifact.path)}"
    if artifact.kind == "pypi":
        # The node links files as files/<quote(project)>/<quote(filename)>; pip requests the
        # link as given (its link cleaning re-quotes to the same text).
        project, _, filename = artifact.path.partition("/")
        return f"/pypi/{quote(artifact.repo)}/files/{quote(project)}/{quote(filename)}"
    return f"/glance/v2/images/{quote(artifact.path)}/file"


def _servers(region: Region, down: Iterable[str]) -> list[RingServer]:
    gone = set(down)
    return [RingServer(s.name, s.id, s.weight) for s in region.siblings if s.name not in gone]


@dataclass(frozen=True)
class SiblingMap:
    """The two rings of a region's front for the siblings that are up."""

    region: Region
    artifacts: Ring
    indexes: Ring

    @staticmethod
    def of(region: Region, down: Iterable[str] = ()) -> SiblingMap:
        if region.front is None:
            raise ValueError(f"region {region.name} has no sibling tier")
        servers = _servers(region, down)
        spec = region.front.hash
        return SiblingMap(region, Ring(servers, spec, UriKey(path_only=True)),
                          Ring(servers, spec, UriKey(depth=INDEX_DEPTH, path_only=True)))

    def sibling_for(self, path: str) -> Sibling | None:
        """The sibling that serves a request for `path` (None: every sibling is down)."""
        ring = self.indexes if INDEX_PATH.match(path) else self.artifacts
        server = ring.server_for(path)
        if server is None:
            return None
        return next(s for s in self.region.siblings if s.name == server.name)


def split_plan(spec: PlanSpec, siblings: SiblingMap) -> dict[str, PlanSpec]:
    """Each live sibling's share of a region's plan, in the plan's order (sibling name ->
    plan). A share's id is derived from its content, so pushing it again is idempotent."""
    shares: dict[str, list[PlanArtifact]] = {}
    for artifact in spec.artifacts:
        sibling = siblings.sibling_for(client_path(artifact))
        if sibling is not None:
            shares.setdefault(sibling.name, []).append(artifact)
    out = {}
    for sibling in siblings.region.siblings:
        artifacts = tuple(shares.get(sibling.name, ()))
        if not artifacts:
            continue
        digest = hashlib.sha256(json.dumps(
            [(a.kind, a.repo, a.path, a.sha256) for a in artifacts]).encode()).hexdigest()
        out[sibling.name] = PlanSpec(f"{siblings.region.name}-{digest[:12]}", artifacts,
                                     spec.concurrency, spec.bandwidth)
    return out


def _address(url: str) -> tuple[str, str, int]:
    """(host as HAProxy writes it, bare host, port) of a node URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"[{host}]" if ":" in host else host), host, port


def _server_line(sibling: Sibling, ca_file: Path | None, extra: str = "") -> str:
    host, bare, port = _address(sibling.url)
    line = f"    server {sibling.name} {host}:{port} id {sibling.id} weight {sibling.weight}"
    if sibling.url.startswith("https://"):
        ca = str(ca_file) if ca_file else "@system-ca"
        line += f" ssl verify required ca-file {ca} sni str({bare}) check-sni {bare}"
    return line + extra


def front_status_body(region: Region) -> str:
    """The log-format of the JSON HAProxy answers at FRONT_STATUS_PATH (escaped for a
    double-quoted configuration argument)."""
    backend = f"{region.name}_siblings"
    items = ",".join(f'\\"{s.name}\\":%[srv_is_up({backend}/{s.name})]'
                     for s in region.siblings)
    return f'{{\\"region\\":\\"{region.name}\\",\\"siblings\\":{{{items}}}}}'


def parse_front_status(doc: object, region: Region) -> dict[str, bool]:
    """Sibling name -> up, from the front's status document (ValueError if it is not one)."""
    if not isinstance(doc, dict) or doc.get("region") != region.name \
            or not isinstance(doc.get("siblings"), dict):
        raise ValueError(f"not the front of region {region.name}: {str(doc)[:200]}")
    states = doc["siblings"]
    return {s.name: bool(states.get(s.name)) for s in region.siblings}


def haproxy_config(region: Region, inventory_path: str = "the inventory",
                   ca_file: Path | None = None, cert: Path | None = None) -> str:
    """A complete HAProxy (2.6) configuration for the region's front."""
    front = region.front
    if front is None:
        raise ValueError(f"region {region.name} has no siblings (nothing to balance)")
    name = region.name
    inter = max(100, int(front.check_interval * 1000))
    tls = f" ssl crt {cert}" if cert else ""
    lines = [
        f"# HAProxy in front of the siblings of region {name}.",
        f"# Written by `distro-sync lb-config {name}` from {inventory_path}. distro-sync computes",
        "# the same consistent-hash mapping to pre-warm each sibling with the artifacts this",
        "# front will send to it: change ids, weights or hash-type in the inventory and write",
        "# this file again, never here alone.",
        "global",
        "    # maxconn: HAProxy derives it from the file-descriptor limit it starts with",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 3s",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout http-request 30s",
        "    timeout queue 30s",
        "    timeout check 3s",
        "    # a request whose sibling refuses the connection goes to the sibling that owns",
        "    # the path once that one is out (observe layer4 marks it down at the first error)",
        "    retries 3",
        "    option redispatch 1",
        "    option forwardfor",
        "",
        f"frontend {name}",
        f"    bind {front.bind}{tls}",
        f'    http-request return status 200 content-type application/json lf-string '
        f'"{front_status_body(region)}" if {{ path {FRONT_STATUS_PATH} }}',
        "    # admin calls go to each sibling directly, never through the front",
        "    http-request deny deny_status 403 if { path_beg /admin/ }",
        f"    use_backend {name}_indexes if {{ path_reg {INDEX_PATH.pattern} }}",
        f"    default_backend {name}_siblings",
        "",
        f"backend {name}_siblings",
        "    balance uri path-only",
        f"    hash-type consistent {front.hash.haproxy}",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        f"    http-response set-header {SIBLING_HEADER} %s",
        f"    default-server check inter {inter} fall 2 rise 2 observe layer4 error-limit 1 "
        "on-error mark-down",
        *(_server_line(s, ca_file) for s in region.siblings),
        "",
        f"backend {name}_indexes",
        f"    balance uri path-only depth {INDEX_DEPTH}",
        f"    hash-type consistent {front.hash.haproxy}",
        f"    http-response set-header {SIBLING_HEADER} %s",
        *(_server_line(s, ca_file, f" track {name}_siblings/{s.name}") for s in region.siblings),
        "",
    ]
    return "\n".join(lines)
