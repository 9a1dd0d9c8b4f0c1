"""distro-sync against token-protected nodes: tokens from the inventory (per region, per node)
or EDGEDEPOT_ADMIN_TOKEN; a wrong or missing token is a clear `denied` line, not a traceback;
the inventory's CA and client certificate reach an HTTPS node behind a private CA."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from syncer.demo.sample_repo import SampleAptRepo
from syncer.fleet import FleetClient
from syncer.inventory import InventoryError, load_inventory, parse_inventory
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")
PARENT_TOKEN = "north-parent-token-3e8a61"
CHILD_TOKEN = "north-child-token-77d0c4"


def distro_sync(*args: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "EDGEDEPOT_ADMIN_TOKEN"}
    return subprocess.run([DISTRO_SYNC, *args], capture_output=True, text=True, timeout=300,
                          env={**base, **(env or {})})


@pytest.fixture
def region(origin: NodeProcess, tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    parent = NodeProcess(["--role", "cache", "--store", str(tmp_path / "p"), "--upstream",
                          origin.url], tmp_path / "p.log",
                         env={"EDGEDEPOT_ADMIN_TOKEN": PARENT_TOKEN})
    with parent:
        (tmp_path / "child.token").write_text(CHILD_TOKEN + "\n")
        child = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                             parent.url, "--admin-token-file", str(tmp_path / "child.token")],
                            tmp_path / "c.log", admin_token=CHILD_TOKEN)
        with child:
            yield parent, child


def inventory(path: Path, origin: NodeProcess, parent: NodeProcess, child: NodeProcess,
              package: str, tokens: str) -> Path:
    path.write_text(
        f'origin = "{origin.url}"\n'
        f'[regions.north]\nparent = "{parent.url}"\nchildren = ["{child.url}"]\n{tokens}\n'
        f'[profiles.compute]\napt = {{ repo = "main", suite = "stable", packages = ["{package}"] }}\n'
        '[sites.n1]\nregion = "north"\nprofile = "compute"\n')
    return path


def test_push_and_status_with_inventory_tokens(
        origin: NodeProcess, region: tuple[NodeProcess, NodeProcess],
        sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    parent, child = region
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "north.token").write_text(PARENT_TOKEN + "\n")
    (secrets / "child.token").write_text(CHILD_TOKEN + "\n")
    (secrets / "wrong.token").write_text("not-the-token-1234\n")
    tokens = ('admin_token_file = "secrets/north.token"\n'  # relative to the inventory
              f'[regions.north.node_token_files]\n"{child.url}" = "secrets/child.token"')
    good = inventory(tmp_path / "fleet.toml", origin, parent, child, sample_apt.top_package,
                     tokens)
    push = distro_sync("push", str(good), "--format", "json")
    assert push.returncode == 0, push.stdout + push.stderr
    pushed = json.loads(push.stdout)
    assert [p["state"] for p in pushed] == ["complete", "complete"], pushed
    status = distro_sync("status", str(good), "--format", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert {s["node"]: s["state"] for s in json.loads(status.stdout)} == \
        {parent.url: "complete", child.url: "complete"}
    sync = distro_sync("sync", str(good), "--format", "json")
    assert sync.returncode == 0, sync.stdout + sync.stderr

    # A wrong token for the child: push and status say so, in one line, with the reason.
    wrong = inventory(tmp_path / "wrong.toml", origin, parent, child, sample_apt.top_package,
                      tokens.replace("secrets/child.token", "secrets/wrong.token"))
    push = distro_sync("push", str(wrong))
    out = push.stdout + push.stderr
    assert push.returncode == 1 and "Traceback" not in out
    assert "denied" in out and "not the node's admin token" in out, out
    status = distro_sync("status", str(wrong), "--format", "json")
    assert status.returncode == 1 and "Traceback" not in status.stdout + status.stderr
    states = {s["node"]: (s["state"], s["error"]) for s in json.loads(status.stdout)}
    assert states[parent.url][0] == "complete"
    assert states[child.url][0] == "denied" and "403" in states[child.url][1]

    # No token in the inventory: EDGEDEPOT_ADMIN_TOKEN is the fallback; without it, 401.
    bare = inventory(tmp_path / "bare.toml", origin, parent, child, sample_apt.top_package, "")
    status = distro_sync("status", str(bare), "--format", "json",
                         env={"EDGEDEPOT_ADMIN_TOKEN": PARENT_TOKEN})
    states = {s["node"]: (s["state"], s["error"]) for s in json.loads(status.stdout)}
    assert states[parent.url][0] == "complete" and states[child.url][0] == "denied"
    status = distro_sync("status", str(bare))
    out = status.stdout + status.stderr
    assert status.returncode == 1 and "Traceback" not in out
    assert "401" in out and "admin_token_file" in out, out
    # No token value in anything distro-sync printed.
    for proc in (push, status):
        for secret in (PARENT_TOKEN, CHILD_TOKEN, "not-the-token-1234"):
            assert secret not in proc.stdout + proc.stderr


def test_token_file_mistakes_are_one_line(origin: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "two.token").write_text("a b\n")
    base = (f'origin = "{origin.url}"\n[regions.north]\nparent = "{origin.url}"\n'
            '[profiles.p]\napt = { packages = ["x"] }\n')
    cases = {
        f'admin_token_file = "{tmp_path}/missing.token"\n' + base:
            "admin_token_file: cannot read token file",
        base.replace("[profiles.p]", 'admin_token_file = "two.token"\n[profiles.p]'):
            "regions.north.admin_token_file: token file",
        base.replace("[profiles.p]", '[regions.north.node_token_files]\n'
                     '"http://elsewhere:1" = "two.token"\n[profiles.p]'):
            "is not a node of this region",
        'ca_file = "nope.pem"\n' + base: "ca_file:",
        'client_cert = "two.token"\n' + base: "client_cert and client_key go together",
    }
    for text, expected in cases.items():
        path = tmp_path / "fleet.toml"
        path.write_text(text)
        proc = distro_sync("status", str(path))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and expected in out and "Traceback" not in out, out
        assert len(out.strip().splitlines()) <= 2, out


def test_plain_http_token_warning() -> None:
    tree = {"origin": "http://10.0.0.1:8080",
            "regions": {"r": {"parent": "http://10.0.0.2:8080", "children": ["https://c:8443"]}},
            "profiles": {}, "sites": {}}
    inv = parse_inventory(tree, env={"EDGEDEPOT_ADMIN_TOKEN": "t0k"})
    assert inv.admin_token("http://10.0.0.2:8080/") == "t0k"
    assert len(inv.warnings) == 1 and "http://10.0.0.2:8080" in inv.warnings[0]
    assert "t0k" not in repr(inv)
    assert parse_inventory(tree).tokens == {}


# -- HTTPS nodes behind a private CA, with client certificates -----------------------------------

def _pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    out: dict[str, Path] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        out[name] = directory / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}-key"] = directory / f"{name}.key"
        out[f"{name}-key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fleet CA")).issuer_name(name("fleet CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca, ca_key)
    for leaf, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(leaf)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if leaf == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        write(leaf, builder.sign(ca_key, hashes.SHA256()), key)
    return out


class HttpsNode:
    """An HTTPS server on 127.0.0.1 answering `GET /admin/plans` like a node with a token,
    requiring a client certificate signed by the CA."""

    def __init__(self, pki: dict[str, Path], token: str) -> None:
        self.pki, self.token, self.url = pki, token, ""
        self.authorizations: list[str] = []

    async def _plans(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        self.authorizations.append(given)
        if given != f"Bearer {self.token}":
            return web.json_response({"error": "forbidden", "message": "wrong token"},
                                     status=403)
        return web.json_response([])

    def __enter__(self) -> HttpsNode:
        ready = threading.Event()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki["server"], self.pki["server-key"])
        context.load_verify_locations(self.pki["ca"])
        context.verify_mode = ssl.CERT_REQUIRED

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/admin/plans", self._plans)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
            self.loop.run_until_complete(site.start())
            self.url = f"https://127.0.0.1:{self.runner.addresses[0][1]}"
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_https_node_behind_a_private_ca(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    (tmp_path / "node.token").write_text("https-node-token-5150\n")
    with HttpsNode(pki, "https-node-token-5150") as node:
        def states(tls: str) -> list[tuple[str, str]]:
            path = tmp_path / "fleet.toml"
            path.write_text(f'{tls}\norigin = "{node.url}"\nadmin_token_file = "node.token"\n'
                            f'[regions.r]\nparent = "{node.url}"\n')
            inv = load_inventory(path, {})

            async def ask() -> list[tuple[str, str]]:
                async with FleetClient.for_inventory(inv, timeout=10) as fleet:
                    return [(s.state, s.error) for s in await fleet.plans(node.url)]
            return asyncio.run(ask())

        full = (f'ca_file = "{pki["ca"]}"\nclient_cert = "{pki["client"]}"\n'
                f'client_key = "{pki["client-key"]}"')
        assert states(full) == [("no plans", "")]
        assert node.authorizations == ["Bearer https-node-token-5150"]
        [(state, error)] = states("")  # system trust only: the private CA is unknown
        assert state == "unreachable" and "certificate" in error.lower(), error
        [(state, error)] = states(f'ca_file = "{pki["ca"]}"')  # no client certificate
        assert state == "unreachable", error
        assert len(node.authorizations) == 1, "no token was sent to an unverified server"
    with pytest.raises(InventoryError, match="cannot use them for TLS"):
        path = tmp_path / "bad.toml"
        path.write_text(f'ca_file = "{tmp_path / "node.token"}"\norigin = "https://x"\n'
                        '[regions.r]\nparent = "https://x"\n')
        load_inventory(path, {})
