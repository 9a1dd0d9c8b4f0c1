"""The shipped deployment files stay true: example configs load, the unit file verifies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cache_node.config import SETTINGS, ListenAddress, load_config, load_defaults
from tests.plugin.pki import write_cert_and_key
from tests.plugin.support import CACHE_NODE

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _materialise(example: str, root: Path) -> Path:
    """The example config with its absolute paths moved under `root`, every file it names
    created (PEM pairs, token, directories), so load_config checks it like on a real host."""
    text = (DEPLOY / example).read_text()
    for prefix in ("/etc/edgedepot", "/var/lib/edgedepot", "/var/log/edgedepot", "/srv"):
        text = text.replace(f'"{prefix}', f'"{root}{prefix}')
    tls = root / "etc/edgedepot/tls"
    for name in ("origin", "cache", "cache-client", "fleet-ca"):
        write_cert_and_key(tls, name)
    token = root / "etc/edgedepot/admin.token"
    token.write_text("example-admin-token\n")
    token.chmod(0o600)
    for sub in ("var/lib/edgedepot/gnupg", "var/log/edgedepot", "srv/debs", "srv/wheels",
                "srv/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    out = root / example
    out.write_text(text)
    return out


def test_origin_example_loads(tmp_path: Path) -> None:
    config = load_config(_materialise("origin.toml", tmp_path), {}, {})
    assert config.role == "origin" and config.listen is None
    assert config.tls.listen == ListenAddress("0.0.0.0", 443) and config.tls.client_ca
    assert config.signing.enabled and config.apt_repo("main") and config.pypi_repo("local")
    assert config.glance.images_dir is not None and config.admin.token == "example-admin-token"
    assert not config.warnings


def test_cache_example_loads(tmp_path: Path) -> None:
    config = load_config(_materialise("cache.toml", tmp_path), {}, {})
    assert config.role == "cache" and config.upstream == "https://origin.example.net/"
    assert config.upstream_tls.client_cert is not None and config.quota_bytes == 500 << 30
    assert config.client_allowed("10.20.3.4") and not config.client_allowed("10.21.0.1")
    assert not config.warnings


def test_unit_file_stops_after_draining_and_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "edgedepot-node.service").read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert stop is not None and int(stop.group(1)) > float(load_defaults()["drain_timeout"])
    for line in ("ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "User=edgedepot",
                 "ExecStart=/opt/edgedepot/bin/cache-node serve --config "
                 "/etc/edgedepot/node.toml", "RestartPreventExitStatus=2"):
        assert line in unit.splitlines()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / "edgedepot-node.service"
    local.write_text(unit.replace("/opt/edgedepot/bin/cache-node", CACHE_NODE))
    proc = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "edgedepot-node.service" not in proc.stderr, proc.stderr


def test_readme_documents_every_setting() -> None:
    """The configuration table names each setting's TOML key, flag and environment variable."""
    readme = (DEPLOY.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for setting in SETTINGS:
        row = next((r for r in rows if r.startswith(f"| `{setting.key}` |")), None)
        assert row is not None, f"README lacks a row for {setting.key}"
        assert f"`{setting.flag}" in row and f"`{setting.env}`" in row, row
