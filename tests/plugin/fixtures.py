"""Shared fixtures: sample repositories built once per session, nodes started per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.debian_repo import BuiltRepository, SigningKey, build_repository, stop_gpg_agent
from syncer.demo.sample_repo import SampleAptRepo, build_sample_apt_repo
from syncer.demo.sample_wheels import build_sample_wheels
from tests.plugin.pki import FleetPki
from tests.plugin.support import FakeUpstream, NodeProcess


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (make test installs it)")


def release_key(key: SigningKey | None) -> None:
    """Stop the key's gpg-agent and remove its (possibly /tmp-relocated) GnuPG home."""
    if key is None:
        return
    stop_gpg_agent(key)
    real = key.gnupg_home.resolve()
    if real.is_dir() and real != key.gnupg_home:
        shutil.rmtree(real, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_apt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleAptRepo]:
    _require("dpkg-deb")
    _require("gpg")
    work = tmp_path_factory.mktemp("sample-apt")
    repo = build_sample_apt_repo(work, n_packages=30, total_bytes=6_000_000, seed=7, signed=True)
    yield repo
    release_key(repo.signing_key)


@pytest.fixture(scope="session")
def sample_tree(sample_apt: SampleAptRepo, tmp_path_factory: pytest.TempPathFactory
                ) -> BuiltRepository:
    """The sample repository laid out as a signed mirror tree (for fake upstreams)."""
    out = tmp_path_factory.mktemp("sample-tree") / "tree"
    return build_repository(sample_apt.deb_dir, out, signing_key=sample_apt.signing_key)


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    build_sample_wheels(out)
    return out


@pytest.fixture
def origin(sample_apt: SampleAptRepo, wheel_dir: Path, tmp_path: Path) -> Iterator[NodeProcess]:
    assert sample_apt.signing_key is not None
    node = NodeProcess(
        ["--role", "origin", "--store", str(tmp_path / "origin"),
         "--apt", f"main={sample_apt.deb_dir}", "--pypi", f"local={wheel_dir}",
         "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
         "--signing-key", sample_apt.signing_key.key_id],
        tmp_path / "origin.log")
    with node:
        yield node


@pytest.fixture
def cache(origin: NodeProcess, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "cache"),
                        "--upstream", origin.url], tmp_path / "cache.log")
    with node:
        yield node


@pytest.fixture
def fake_upstream(sample_tree: BuiltRepository) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(sample_tree.root).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    """A fleet CA with origin and cache certificates, and a stranger CA (made by the tests)."""
    return FleetPki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_origin(sample_apt: SampleAptRepo, wheel_dir: Path, fleet_pki: FleetPki,
               tmp_path: Path) -> Iterator[NodeProcess]:
    """The `origin` fixture on HTTPS only, serving only caches with a fleet client certificate.
    Its .debs are hard links in `tmp_path / "debs"` (a test may publish more)."""
    assert sample_apt.signing_key is not None
    debs = tmp_path / "debs"
    debs.mkdir()
    for deb in sample_apt.deb_dir.glob("*.deb"):
        os.link(deb, debs / deb.name)
    node = NodeProcess(
        ["--role", "origin", "--store", str(tmp_path / "origin"),
         "--apt", f"main={debs}", "--pypi", f"local={wheel_dir}",
         "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
         "--signing-key", sample_apt.signing_key.key_id,
         *fleet_pki.server_flags(fleet_pki.origin, client_ca=True)],
        tmp_path / "origin.log", listen=None, tls_listen="127.0.0.1:0",
        client_tls=fleet_pki.client_context(fleet_pki.cache_client))
    with node:
        yield node


@pytest.fixture
def tls_cache(tls_origin: NodeProcess, fleet_pki: FleetPki, tmp_path: Path
              ) -> Iterator[NodeProcess]:
    """A cache over mutual TLS to `tls_origin`, serving plain HTTP and HTTPS."""
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "cache"),
                        "--upstream", tls_origin.https_url, *fleet_pki.upstream_flags(),
                        *fleet_pki.server_flags(fleet_pki.cache)],
                       tmp_path / "cache.log", tls_listen="127.0.0.1:0",
                       client_tls=fleet_pki.client_context())
    with node:
        yield node
