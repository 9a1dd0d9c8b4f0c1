"""Admin tokens, the allow-list and what the access log shows, on real origin and cache nodes.

The origin takes its token from `--admin-token-file`, the cache from `EDGEDEPOT_ADMIN_TOKEN`.
Every admin endpoint answers 401 without a token, 403 with a wrong one and 2xx with the right
one; the Glance cache API also still accepts a Glance admin's X-Auth-Token; site-facing reads
stay open; the cache's delta fetch from the token-protected origin works; no token value ever
reaches a log.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cache_node.admin_auth import AccessPolicy, startup_warning
from cache_node.config import load_config
from distro.glance_images import DigestMemo, load_image_directory, write_image
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

ORIGIN_TOKEN = "origin-admin-7f3c9b1e2d4a"
CACHE_TOKEN = "cache-admin-a1b2c3d4e5f6"
WRONG_TOKEN = "wrong-admin-0000beefcafe"
GLANCE_ADMIN = "glance-admin-tok-91ab77"
GLANCE_MEMBER = "glance-member-tok-5ce2aa"
SECRETS = (ORIGIN_TOKEN, CACHE_TOKEN, WRONG_TOKEN, GLANCE_ADMIN, GLANCE_MEMBER)
MIB = 1 << 20


@dataclass
class Tiers:
    work: Path
    logs: Path
    origin: NodeProcess
    cache: NodeProcess
    ids: dict[str, str]


def call(node: NodeProcess, method: str, path: str, *, bearer: str | None = None,
         headers: dict[str, str] | None = None, body: Any = None
         ) -> tuple[int, Any, dict[str, str]]:
    """One request; the body parsed as JSON when it is JSON."""
    h = dict(headers or {})
    if bearer is not None:
        h["Authorization"] = f"Bearer {bearer}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(node.url + path, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw, got = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, raw, got


def _images(root: Path) -> None:
    rnd = random.Random(10)
    v1 = rnd.randbytes(2 * MIB)
    v2 = v1[:MIB] + rnd.randbytes(4096) + v1[MIB + 4096:]
    props = {"os_distro": "edgeos", "os_version": "1"}
    write_image(root, "edgeos-1.0", v1, visibility="public", properties=props,
                created_at="2026-01-01T00:00:00Z")
    write_image(root, "edgeos-1.1", v2, visibility="public", properties=props,
                created_at="2026-02-01T00:00:00Z")
    write_image(root, "cirros", rnd.randbytes(MIB // 2), visibility="public",
                created_at="2026-01-01T00:00:00Z")
    (root / "tokens.toml").write_text(
        f'[tokens."{GLANCE_ADMIN}"]\nproject = "ops"\nroles = ["admin", "member"]\n'
        f'[tokens."{GLANCE_MEMBER}"]\nproject = "p1"\nroles = ["member"]\n')


@pytest.fixture(scope="module")
def tiers(sample_apt: SampleAptRepo, wheel_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    assert sample_apt.signing_key is not None
    work = tmp_path_factory.mktemp("admin-auth")
    logs = work / "logs"
    logs.mkdir()
    images = work / "images"
    _images(images)
    ids = {d.image.name or "": d.image.id
           for d in load_image_directory(images, DigestMemo(None)).images}
    token_file = work / "origin.token"
    token_file.write_text(ORIGIN_TOKEN + "\n")
    token_file.chmod(0o600)
    origin = NodeProcess(
        ["--role", "origin", "--store", str(work / "origin"), "--apt",
         f"main={sample_apt.deb_dir}", "--pypi", f"local={wheel_dir}", "--images", str(images),
         "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
         "--signing-key", sample_apt.signing_key.key_id, "--admin-token-file", str(token_file),
         "--access-log", str(logs / "origin-access.jsonl"), "--access-log-format", "json"],
        logs / "origin.log", admin_token=ORIGIN_TOKEN)
    with origin:
        cache = NodeProcess(
            ["--role", "cache", "--store", str(work / "cache"), "--upstream", origin.url,
             "--access-log", str(logs / "cache-access.log")],
            logs / "cache.log", env={"EDGEDEPOT_ADMIN_TOKEN": CACHE_TOKEN})
        with cache:
            yield Tiers(work, logs, origin, cache, ids)


def _wait_cached(node: NodeProcess, image_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, doc, _ = call(node, "GET", "/glance/v2/cache", bearer=node.admin_token)
        assert status == 200, doc
        if image_id in {c["image_id"] for c in doc["cached_images"]}:
            return
        time.sleep(0.2)
    raise AssertionError(f"image {image_id} was not cached")


def _check_refused_then_allowed(node: NodeProcess, method: str, path: str,
                                body: Any = None) -> tuple[int, Any]:
    status, doc, headers = call(node, method, path, body=body)
    assert status == 401, (method, path, status, doc)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), (method, path, headers)
    assert doc["error"] == "unauthorized" and "admin token" in doc["message"]
    status, doc, _ = call(node, method, path, bearer=WRONG_TOKEN, body=body)
    assert status == 403 and doc["error"] == "forbidden", (method, path, status, doc)
    status, doc, _ = call(node, method, path, bearer=node.admin_token, body=body)
    assert 200 <= status < 300, (method, path, status, doc)
    return status, doc


@pytest.mark.parametrize("where", ["origin", "cache"])
def test_every_admin_endpoint_needs_the_token(tiers: Tiers, where: str) -> None:
    node: NodeProcess = getattr(tiers, where)
    plan = {"plan_id": f"auth-{where}", "artifacts": []}
    _check_refused_then_allowed(node, "GET", "/admin/served")
    _check_refused_then_allowed(node, "GET", "/admin/plans")
    status, doc = _check_refused_then_allowed(node, "PUT", f"/admin/plans/auth-{where}", plan)
    assert status == 202 and doc["plan_id"] == f"auth-{where}"
    _, doc = _check_refused_then_allowed(node, "GET", f"/admin/plans/auth-{where}")
    assert doc["plan_id"] == f"auth-{where}"
    _, doc = _check_refused_then_allowed(node, "POST", "/admin/has", {"sha256": []})
    assert doc == {"present": []}
    _check_refused_then_allowed(node, "POST", "/admin/refresh")
    # The refused DELETEs above did not delete: the right token still finds the plan.
    _, doc = _check_refused_then_allowed(node, "DELETE", f"/admin/plans/auth-{where}")
    assert doc == {"deleted": f"auth-{where}"}
    assert call(node, "GET", f"/admin/plans/auth-{where}", bearer=node.admin_token)[0] == 404


def test_glance_cache_api_takes_the_node_token(tiers: Tiers) -> None:
    cache, cirros = tiers.cache, tiers.ids["cirros"]
    _, doc = _check_refused_then_allowed(cache, "GET", "/glance/v2/cache")
    assert doc["cached_images"] == []
    status, _ = _check_refused_then_allowed(cache, "PUT", f"/glance/v2/cache/{cirros}")
    assert status == 202
    _wait_cached(cache, cirros)  # the queue request really made the cache fetch it
    status, _ = _check_refused_then_allowed(cache, "DELETE", f"/glance/v2/cache/{cirros}")
    assert status == 204
    for method, path in (("DELETE", "/glance/v2/cache"), ("POST", "/glance/v2/cache/clean"),
                         ("POST", "/glance/v2/cache/prune")):
        _check_refused_then_allowed(cache, method, path)
    status, doc, _ = call(cache, "GET", "/glance/v2/cache", bearer=CACHE_TOKEN)
    assert status == 200 and doc["cached_images"] == []


def test_glance_cache_api_still_takes_a_glance_admin(tiers: Tiers) -> None:
    """Without a bearer token the Glance rule applies: the cache asks the (token-protected)
    origin whether the caller's X-Auth-Token is a Glance admin."""
    cache = tiers.cache
    status, doc, _ = call(cache, "GET", "/glance/v2/cache",
                          headers={"X-Auth-Token": GLANCE_ADMIN})
    assert status == 200 and "cached_images" in doc
    status, doc, _ = call(cache, "GET", "/glance/v2/cache",
                          headers={"X-Auth-Token": GLANCE_MEMBER})
    assert status == 403, doc
    # A wrong bearer token is refused even next to a Glance admin token.
    status, doc, _ = call(cache, "GET", "/glance/v2/cache", bearer=WRONG_TOKEN,
                          headers={"X-Auth-Token": GLANCE_ADMIN})
    assert status == 403 and doc["error"] == "forbidden"


@pytest.mark.parametrize("path", [
    "/", "/healthz", "/metrics", "/keys/", "/keys/repository.gpg",
    "/apt/main/dists/stable/InRelease", "/pypi/local/simple/", "/glance/versions",
    "/glance/v2/images"])
@pytest.mark.parametrize("where", ["origin", "cache"])
def test_site_facing_reads_stay_open(tiers: Tiers, where: str, path: str) -> None:
    status, body, _ = call(getattr(tiers, where), "GET", path)
    assert status == 200, (path, status, body)


def test_cache_fetches_an_image_by_delta_from_the_token_protected_origin(tiers: Tiers) -> None:
    """The delta endpoints stay open as content-addressed reads: a cache needs no credential of
    its upstream for them, and the access logs of both tiers show it happen."""
    cache = tiers.cache
    v1, v2 = tiers.ids["edgeos-1.0"], tiers.ids["edgeos-1.1"]
    assert call(cache, "GET", f"/glance/v2/images/{v1}/file")[0] == 200
    status, body, _ = call(cache, "GET", f"/glance/v2/images/{v2}/file")
    assert status == 200 and len(body) == 2 * MIB
    lines = (tiers.logs / "cache-access.log").read_text().splitlines()
    by_path = {f.split(" ")[3]: f.split(" ") for f in lines}
    assert by_path[f"/glance/v2/images/{v1}/file"][7] == "miss"
    v2_line = by_path[f"/glance/v2/images/{v2}/file"]
    assert v2_line[7] == "delta" and v2_line[4] == "200" and int(v2_line[5]) == 2 * MIB
    origin_lines = [json.loads(line) for line in
                    (tiers.logs / "origin-access.jsonl").read_text().splitlines()]
    delta = [e for e in origin_lines if e["path"].startswith("/delta/v1/blobs/")]
    assert delta and all(e["status"] == 200 for e in delta), delta
    assert not any(e["path"] == f"/glance/v2/images/{v2}/file" for e in origin_lines)


def test_no_token_ever_reaches_a_log(tiers: Tiers) -> None:
    for node in (tiers.origin, tiers.cache):
        for secret in SECRETS:
            call(node, "GET", "/admin/served", bearer=secret)
            call(node, "GET", "/glance/v2/cache", headers={"X-Auth-Token": secret})
            call(node, "GET", f"/glance/v2/images/{tiers.ids['cirros']}",
                 headers={"X-Auth-Token": secret})
    time.sleep(0.3)
    logs = sorted(p for p in tiers.logs.iterdir() if p.is_file())
    assert {p.name for p in logs} >= {"origin.log", "cache.log", "origin-access.jsonl",
                                      "cache-access.log"}
    text = {p.name: p.read_text() for p in logs}
    # The requests above were logged (the check below is about real log lines) ...
    assert text["cache-access.log"].count(" GET /admin/served 403 ") >= 4
    assert text["origin-access.jsonl"].count('"path":"/glance/v2/cache"') >= 5
    # ... and not one line of any log holds a token.
    for name, content in text.items():
        for secret in SECRETS:
            assert secret not in content, f"{secret} appears in {name}"


# -- allow-list and the default without a token --------------------------------------------------

def test_allow_list_refuses_clients_outside_on_every_route(wheel_dir: Path,
                                                           tmp_path: Path) -> None:
    args = ["--role", "origin", "--store", str(tmp_path / "s"), "--pypi", f"local={wheel_dir}"]
    with NodeProcess([*args, "--allow", "10.0.0.0/8", "--allow", "192.0.2.7"],
                     tmp_path / "refused.log") as node:
        for method, path in (("GET", "/"), ("GET", "/healthz"), ("GET", "/metrics"),
                             ("GET", "/pypi/local/simple/"), ("GET", "/admin/served"),
                             ("POST", "/admin/refresh"), ("GET", "/no/such/path"),
                             ("GET", "/glance/v2/cache")):
            status, doc, _ = call(node, method, path, bearer="anything")
            assert status == 403, (path, status, doc)
            assert doc["error"] == "client_not_allowed" and "127.0.0.1" in doc["message"]
    with NodeProcess([*args, "--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8"],
                     tmp_path / "allowed.log") as node:
        assert call(node, "GET", "/pypi/local/simple/")[0] == 200
        assert call(node, "GET", "/healthz")[0] == 200
        assert call(node, "GET", "/admin/served")[0] == 200  # loopback, no token configured


def test_without_a_token_admin_answers_loopback_clients_only(wheel_dir: Path,
                                                             tmp_path: Path) -> None:
    with NodeProcess(["--role", "origin", "--store", str(tmp_path / "s"),
                      "--pypi", f"local={wheel_dir}"], tmp_path / "n.log") as node:
        assert call(node, "GET", "/admin/served")[0] == 200
        # Through a reverse proxy on the same host the client is not loopback.
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            status, doc, _ = call(node, "GET", "/admin/plans", headers={header: "192.0.2.9"})
            assert status == 403 and doc["error"] == "admin_loopback_only", (header, doc)
        # A bearer token is no way in when the node has none configured.
        status, doc, _ = call(node, "GET", "/admin/served", bearer="guess",
                              headers={"X-Forwarded-For": "192.0.2.9"})
        assert status == 403
        assert call(node, "GET", "/pypi/local/simple/",
                    headers={"X-Forwarded-For": "192.0.2.9"})[0] == 200


def _request(path: str, remote: str, headers: dict[str, str] | None = None) -> web.Request:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (remote, 40000) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    return make_mocked_request("GET", path, headers=headers or {}, transport=Transport())


def test_policy_for_remote_clients(tmp_path: Path) -> None:
    """Clients that are not loopback (which a test cannot open a socket from) get the same
    rules from the policy the middleware applies."""
    base = {"role": "origin"}
    (tmp_path / "w").mkdir()
    config = load_config(None, {}, {**base, "store": str(tmp_path / "s")},
                         pypi_flags=[f"local={tmp_path / 'w'}"])
    open_policy = AccessPolicy(config)
    refused = open_policy.refusal(_request("/admin/served", "192.0.2.10"))
    assert refused is not None and refused.status == 403
    assert open_policy.refusal(_request("/admin/served", "::1")) is None
    assert open_policy.refusal(_request("/admin/served", "::ffff:127.0.0.1")) is None
    assert open_policy.refusal(_request("/apt/main/dists/stable/InRelease", "192.0.2.10")) is None
    # The Glance cache API keeps the Glance rule when the node has no token of its own.
    assert open_policy.refusal(_request("/glance/v2/cache", "192.0.2.10")) is None
    with_token = load_config(None, {"EDGEDEPOT_ADMIN_TOKEN": ORIGIN_TOKEN},
                             {**base, "store": str(tmp_path / "s")},
                             pypi_flags=[f"local={tmp_path / 'w'}"])
    policy = AccessPolicy(with_token)
    ok = _request("/admin/served", "192.0.2.10", {"Authorization": f"bearer {ORIGIN_TOKEN}"})
    assert policy.refusal(ok) is None
    bad = policy.refusal(_request("/admin/served", "192.0.2.10",
                                  {"Authorization": f"Bearer {ORIGIN_TOKEN}x"}))
    assert bad is not None and bad.status == 403
    basic = policy.refusal(_request("/admin/served", "192.0.2.10",
                                    {"Authorization": f"Basic {ORIGIN_TOKEN}"}))
    assert basic is not None and basic.status == 401
    # A reload swaps the token: the old one stops working at once.
    policy.update(config)
    assert policy.refusal(ok) is not None


def test_startup_warning_names_the_unprotected_admin_endpoints(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()

    def config(listen: str, env: dict[str, str]) -> Any:
        return load_config(None, env, {"role": "origin", "store": str(tmp_path / "s"),
                                       "listen": listen},
                           pypi_flags=[f"local={tmp_path / 'w'}"])

    warning = startup_warning(config("0.0.0.0:8080", {}))
    assert warning is not None and "loopback clients only" in warning
    assert startup_warning(config("127.0.0.1:8080", {})) is None
    assert startup_warning(config("0.0.0.0:8080", {"EDGEDEPOT_ADMIN_TOKEN": "t"})) is None
