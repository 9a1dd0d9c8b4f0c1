"""Who may see the console: a real `distro-sync console` over real TLS (a CA the test makes)
with a viewer token; sites reach their bootstrap script with the onboarding token only; a
console that would show the fleet to a network without a token over TLS refuses to start."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.plugin.console import DISTRO_SYNC, ConsoleProcess
from tests.plugin.pki import CertificateAuthority

VIEWER = "viewer-secret-93"
ONBOARDING = "onboard-51c2"
FINGERPRINT = "AB" * 20


def write_inventory(path: Path) -> Path:
    (path.parent / "onboarding.token").write_text(ONBOARDING + "\n")
    # nodes nobody listens on (port 9, discard): the console shows them unreachable
    path.write_text(f"""origin = "http://127.0.0.1:9"
onboarding_token_file = "onboarding.token"
repository_key = "{FINGERPRINT}"

[regions.north]
parent = "http://127.0.0.1:9"

[profiles.compute]
apt = {{ repo = "main", suite = "stable", packages = ["edge-agent"] }}

[sites.north-01]
region = "north"
profile = "compute"
""")
    return path


def request(console: ConsoleProcess, method: str, path: str, body: str | None = None,
            headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One request, redirects not followed (to see the sign-in answer itself)."""
    host, port = console.url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=console.context, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_viewer_token_over_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", "console-ca")
    server = ca.issue_server("console")
    (tmp_path / "viewer.token").write_text(VIEWER + "\n")
    inventory = write_inventory(tmp_path / "fleet.toml")
    log_path = tmp_path / "console.log"
    args = ("--token-file", str(tmp_path / "viewer.token"), "--tls-cert", str(server.cert),
            "--tls-key", str(server.key))
    with ConsoleProcess(inventory, log_path, args=args, cafile=ca.cert) as console:
        assert console.url.startswith("https://127.0.0.1:")
        # the API: 401 without a token (the one error shape), 403 with a wrong one
        status, body = console.get("/api/overview")
        assert status == 401 and json.loads(body)["error"] == "unauthorized"
        assert console.get("/api/nodes", {"Authorization": "Bearer nope"})[0] == 403
        status, body = console.get("/api/nodes", {"Authorization": f"Bearer {VIEWER}"})
        assert status == 200 and "items" in json.loads(body)
        # the page: a sign-in form that shows nothing of the fleet; its assets are open
        status, body = console.get("/")
        assert status == 401 and b'action="/login"' in body and b"north" not in body
        assert console.get("/static/console.js")[0] == 200
        # signing in: a wrong token is refused, the right one gets a session cookie
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request(console, "POST", "/login", "token=nope", form).status == 403
        signed = request(console, "POST", "/login", f"token={VIEWER}", form)
        assert signed.status == 303 and signed.getheader("Location") == "/"
        cookie = signed.getheader("Set-Cookie", "")
        for attribute in ("HttpOnly", "Secure", "SameSite=Strict"):
            assert attribute in cookie, cookie
        assert VIEWER not in cookie  # a session derived from the token, not the token
        session = {"Cookie": cookie.split(";", 1)[0]}
        status, body = console.get("/", session)
        assert status == 200 and b'action="/login"' not in body
        assert console.get("/api/sites", session)[0] == 200
        assert console.get("/api/overview", {"Cookie": "edgedepot_console=forged"})[0] == 401
        # a site's bootstrap script: the onboarding token (or a viewer), nothing else
        script = "/sites/north-01/bootstrap.sh"
        assert console.get(script)[0] == 401
        assert console.get(script, {"Authorization": "Bearer nope"})[0] == 403
        status, body = console.get(script, {"Authorization": f"Bearer {ONBOARDING}"})
        assert status == 200 and body.startswith(b"#!/bin/sh")
        assert console.get(script, session)[0] == 200
        # plain HTTP on the HTTPS port gets no page
        host, port = console.url.removeprefix("https://").rsplit(":", 1)
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            plain.request("GET", "/api/overview")
            answered: int | None = plain.getresponse().status
        except (http.client.HTTPException, OSError):
            answered = None
        assert answered in (None, 400)
        # a client that does not trust the console's CA is refused by TLS itself
        stranger = ssl.create_default_context()
        conn = http.client.HTTPSConnection(host, int(port), context=stranger, timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/")
    assert VIEWER not in log_path.read_text()


@pytest.mark.parametrize(("listen", "extra", "env", "message"), [
    ("192.0.2.10:8090", (), {}, "give --token-file"),
    ("192.0.2.10:8090", ("--token-file", "{token}"), {}, "viewer token in clear"),
    ("192.0.2.10:8090", (), {"EDGEDEPOT_CONSOLE_TOKEN": "x"}, "viewer token in clear"),
    ("127.0.0.1:0", ("--token-file", "{missing}"), {}, "--token-file {missing}: No such file"),
    ("127.0.0.1:0", ("--token-file", "{empty}"), {}, "is empty"),
    ("127.0.0.1:0", ("--tls-cert", "{token}"), {}, "--tls-cert and --tls-key go together"),
    ("127.0.0.1:0", ("--tls-cert", "{token}", "--tls-key", "{token}"), {}, "cannot load"),
])
def test_refuses_to_expose_the_fleet(tmp_path: Path, listen: str, extra: tuple[str, ...],
                                     env: dict[str, str], message: str) -> None:
    """One line each, exit 2, before anything listens (192.0.2.10 is never bound)."""
    names = {"token": tmp_path / "viewer.token", "missing": tmp_path / "missing.token",
             "empty": tmp_path / "empty.token"}
    names["token"].write_text(VIEWER)
    names["empty"].write_text("\n")
    inventory = write_inventory(tmp_path / "fleet.toml")
    fill = {k: str(v) for k, v in names.items()}
    proc = subprocess.run(
        [DISTRO_SYNC, "console", str(inventory), "--listen", listen,
         *(a.format(**fill) for a in extra)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message.format(**fill) in lines[0]
    assert proc.stdout == ""
