"""pip requirements resolved against a real origin node's PEP 691 index, checked against pip."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.pip_resolver import PipResolveError, PipTarget, resolve_pip
from syncer.blocking_http import BlockingHttp
from syncer.demo.sample_wheels import SampleWheel, build_sample_wheels, sample_wheel_set
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pip_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    wheels = tmp_path_factory.mktemp("pip-wheels")
    extra = [
        SampleWheel("edge-marker", "1.0.0", ("edge-proto; python_version >= '3.8'",
                                            "edge-never; sys_platform == 'win32'"), 1024),
        SampleWheel("edge-extra", "0.1.0", ("edge-common[fast]>=1.0",), 1024),
    ]
    build_sample_wheels(wheels, [*sample_wheel_set(), *extra])
    work = tmp_path_factory.mktemp("pip-origin")
    node = NodeProcess(["--role", "origin", "--store", str(work / "store"),
                        "--pypi", f"local={wheels}"], work / "origin.log").start()
    try:
        yield f"{node.url}/pypi/local/simple/", wheels
    finally:
        node.stop()


@pytest.fixture
def http() -> Iterator[BlockingHttp]:
    """The scheduler's one HTTP client, as the resolver's way to read the index."""
    with BlockingHttp() as client:
        yield client


def test_pins_with_hashes_in_dependency_order(http: BlockingHttp, pip_origin: tuple[str, Path]) -> None:
    url, wheels = pip_origin
    plan = resolve_pip(url, ["edge-agent"], PipTarget("3.11"), fetch=http.get)
    assert [(p.name, p.version) for p in plan.pins] == [
        ("edge-proto", "0.3.0"), ("edge-common", "1.1.0"), ("edge-agent", "2.0.0")]
    for pin in plan.pins:
        assert pin.sha256 == hashlib.sha256((wheels / pin.filename).read_bytes()).hexdigest()
        assert pin.url.startswith(url.split("/pypi/")[0])
    text = plan.requirements_txt()
    assert text.splitlines()[0].startswith("edge-proto==0.3.0 --hash=sha256:")
    assert json.loads(plan.to_json())["pins"][2]["name"] == "edge-agent"


def test_constraints_markers_and_extras(http: BlockingHttp, pip_origin: tuple[str, Path]) -> None:
    url, _ = pip_origin
    plan = resolve_pip(url, ["edge-agent", "edge-common<1.1"], fetch=http.get)
    assert {(p.name, p.version) for p in plan.pins} == {
        ("edge-proto", "0.3.0"), ("edge-common", "1.0.0"), ("edge-agent", "2.0.0")}
    marker = resolve_pip(url, ["edge-marker"], fetch=http.get)
    assert [p.name for p in marker.pins] == ["edge-proto", "edge-marker"]
    extra = resolve_pip(url, ["edge-extra"], fetch=http.get)
    assert {p.name for p in extra.pins} == {"edge-extra", "edge-common", "edge-proto"}


def test_unsatisfiable(http: BlockingHttp, pip_origin: tuple[str, Path]) -> None:
    url, _ = pip_origin
    with pytest.raises(PipResolveError, match="edge-common>5"):
        resolve_pip(url, ["edge-agent", "edge-common>5"], fetch=http.get)
    with pytest.raises(PipResolveError):
        resolve_pip(url, ["no-such-project"], fetch=http.get)


def test_matches_real_pip(http: BlockingHttp, pip_origin: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = pip_origin
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--report", str(report),
         "--index-url", url, "edge-agent", "edge-marker"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    theirs = {(i["metadata"]["name"], i["metadata"]["version"],
               i["download_info"]["archive_info"]["hashes"]["sha256"])
              for i in json.loads(report.read_text())["install"]}
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    plan = resolve_pip(url, ["edge-agent", "edge-marker"], PipTarget(ver), fetch=http.get)
    assert {(p.name, p.version, p.sha256) for p in plan.pins} == theirs


def test_site_plan_and_cli(http: BlockingHttp, pip_origin: tuple[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from distro.packages_index import load_index
    from distro.plans import build_site_plan
    from syncer.cli import main as cli_main
    from tests.test_resolver_rules import stanza

    url, _ = pip_origin
    packages = tmp_path / "Packages"
    packages.write_text(stanza("python3-agent", Depends="python3") + "\n" + stanza("python3"))
    index = load_index([packages], cache_dir=tmp_path / "cache")
    site = build_site_plan("compute", index, ["python3-agent"], pip_index=url,
                           pip_requirements=["edge-agent"], pip_fetch=http.get)
    kinds = [a[0] for a in site.artifacts]
    assert kinds == ["deb", "deb", "pip", "pip", "pip"]
    assert site.artifacts[0][1] == "pool/python3_1.0_amd64.deb"
    assert json.loads(site.to_json())["artifacts"][-1]["ref"].endswith(".whl")
    assert cli_main(["resolve", "--index", str(packages), "--cache-dir", str(tmp_path / "c"),
                     "--pip-index", url, "--pip", "edge-agent", "python3-agent"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in out["pip"]["pins"]][-1] == "edge-agent"
    assert [p["name"] for p in out["deb"]["packages"]] == ["python3", "python3-agent"]
