"""Tests for distro.debian_repo: index parsing, decompression, building and signing."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from backports import zstd
from debian.deb822 import Deb822
from debian.debian_support import Version
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distro.debian_repo import (
    BuiltRepository,
    MalformedIndexError,
    PoolEntry,
    SigningKey,
    build_repository,
    decompress_index,
    export_public_key,
    parse_packages,
    parse_release,
    stop_gpg_agent,
)
from syncer.demo.sample_repo import SampleDeb, build_deb, build_sample_debs, sample_graph
from syncer.demo.signing import make_throwaway_key

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or shutil.which("gpg") is None,
    reason="dpkg-deb and gpg are needed (make test installs them)",
)

SHA = "ab" * 32


def _spec(name: str, version: str = "1.0-1", arch: str = "all", **kw: object) -> SampleDeb:
    fields: dict[str, object] = {
        "depends": (),
        "pre_depends": (),
        "recommends": (),
        "provides": (),
        "payload_bytes": 600,
        "description": f"{name} synopsis\nlong text",
    }
    fields.update(kw)
    return SampleDeb(name=name, version=version, architecture=arch, **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    # pytest's tmp paths are long: this also exercises the short-GNUPGHOME fallback.
    home = tmp_path_factory.mktemp("gpg") / ("a-rather-long-directory-name-" * 3) / "gnupg"
    signing_key = make_throwaway_key(home)
    assert len(str(signing_key.gnupg_home)) < 90
    yield signing_key
    stop_gpg_agent(signing_key)
    if signing_key.gnupg_home != home:
        shutil.rmtree(signing_key.gnupg_home, ignore_errors=True)


@pytest.fixture(scope="module")
def keyring(key: SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_public_key(key, tmp_path_factory.mktemp("keyring") / "archive-keyring.gpg")


@pytest.fixture(scope="module")
def deb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debs")
    build_sample_debs(out / "sample", sample_graph(22, total_bytes=120_000, seed=3), seed=3)
    # Extra shapes: an arm64 package, a control.tar.zst deb, two versions of one package.
    build_deb(_spec("edge-tool", "2.0-1", "arm64", depends=("edge-libc6",)), out, seed=1)
    build_deb(_spec("edge-zst", "1:0.5~rc1-1", "amd64"), out, seed=2, compression="zstd")
    build_deb(_spec("edge-multi", "1.10-1"), out / "nested" / "deeper", seed=3)
    build_deb(_spec("edge-multi", "1.9-1"), out, seed=4)
    return out


@pytest.fixture(scope="module")
def repo(
    deb_dir: Path, key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> BuiltRepository:
    return build_repository(deb_dir, tmp_path_factory.mktemp("repo") / "tree", signing_key=key)


def _gpgv(keyring: Path, *files: Path, home: Path) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    argv = ["gpgv", "--homedir", str(home), "--keyring", str(keyring), *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------- built repository


def test_inrelease_and_release_give_same_index(repo: BuiltRepository) -> None:
    dist = repo.root / "dists" / "stable"
    signed = parse_release((dist / "InRelease").read_bytes(), "InRelease")
    plain = parse_release((dist / "Release").read_bytes(), "Release")
    assert signed == plain == repo.release
    assert dict(signed.files) == dict(plain.files)
    assert signed.suite == signed.codename == "stable"
    assert signed.acquire_by_hash
    assert signed.architectures == ("amd64", "arm64")
    assert signed.components == ("main",)
    assert signed.date.endswith(" UTC")
    assert signed.entry("main/binary-amd64/Packages.xz") is not None
    assert signed.entry("main/binary-i386/Packages") is None


def test_every_listed_file_matches_and_has_by_hash(repo: BuiltRepository) -> None:
    dist = repo.root / "dists" / "stable"
    assert len(repo.release.files) == 8  # Packages, .gz, .xz, Release for two arches
    for rel, entry in repo.release.files.items():
        data = (dist / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256)
        by_hash = dist / os.path.dirname(rel) / "by-hash" / "SHA256" / entry.sha256
        assert by_hash.read_bytes() == data
    for arch in ("amd64", "arm64"):
        base = f"main/binary-{arch}/Packages"
        raw = (dist / base).read_bytes()
        assert decompress_index(base + ".gz", (dist / f"{base}.gz").read_bytes()) == raw
        assert decompress_index(base + ".xz", (dist / f"{base}.xz").read_bytes()) == raw
    release_text = (dist / "Release").read_text()
    assert "\nMD5Sum:\n" in release_text and "Valid-Until" not in release_text


def test_signatures_verify_with_exported_keyring(
    repo: BuiltRepository, keyring: Path, tmp_path: Path
) -> None:
    dist = repo.root / "dists" / "stable"
    ok = _gpgv(keyring, dist / "InRelease", home=tmp_path / "h")
    assert ok.returncode == 0, ok.stderr
    ok = _gpgv(keyring, dist / "Release.gpg", dist / "Release", home=tmp_path / "h")
    assert ok.returncode == 0, ok.stderr
    tampered = tmp_path / "InRelease"
    tampered.write_text((dist / "InRelease").read_text().replace("Suite: stable", "Suite: evil"))
    assert _gpgv(keyring, tampered, home=tmp_path / "h").returncode != 0


def test_armored_export(key: SigningKey, tmp_path: Path) -> None:
    out = export_public_key(key, tmp_path / "key.asc")
    assert out.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_packages_indexes_match_built_packages(repo: BuiltRepository, deb_dir: Path) -> None:
    dist = repo.root / "dists" / "stable"
    by_arch = {
        arch: parse_packages((dist / f"main/binary-{arch}/Packages").read_bytes(), arch)
        for arch in ("amd64", "arm64")
    }
    for arch, entries in by_arch.items():
        assert entries == [p for p in repo.packages if p.architecture in (arch, "all")]
        keys = [(e.package, Version(e.version)) for e in entries]
        assert keys == sorted(keys)
    names = {p.package for p in by_arch["arm64"]}
    assert "edge-tool" in names and "edge-zst" not in names and "edge-compute-node" in names
    assert [p.version for p in repo.packages if p.package == "edge-multi"] == ["1.9-1", "1.10-1"]
    assert len(repo.packages) == len(list(deb_dir.rglob("*.deb")))
    for entry in repo.packages:
        pool_file = repo.root / entry.filename
        assert pool_file.stat().st_size == entry.size
        assert hashlib.sha256(pool_file.read_bytes()).hexdigest() == entry.sha256
        assert entry.filename.startswith(f"pool/main/e/{entry.package}/")


def test_stanzas_carry_control_fields(repo: BuiltRepository) -> None:
    raw = (repo.root / "dists/stable/main/binary-amd64/Packages").read_text()
    stanzas = {str(p["Package"]): p for p in Deb822.iter_paragraphs(raw)}
    chrony = stanzas["edge-chrony"]
    assert chrony["Provides"] == "edge-time-daemon"
    assert chrony["Pre-Depends"].startswith("edge-init-system-helpers (>= ")
    assert "edge-qemu-system-x86 | edge-qemu-kvm" in stanzas["edge-nova-compute"]["Depends"]
    assert stanzas["edge-zst"]["Version"] == "1:0.5~rc1-1"
    for para in stanzas.values():
        assert list(para.keys())[-1] == "Description"
        data = (repo.root / para["Filename"]).read_bytes()
        assert para["MD5sum"] == hashlib.md5(data).hexdigest()
        assert para["SHA256"] == hashlib.sha256(data).hexdigest()
        assert int(para["Installed-Size"]) > 0 and para["Maintainer"]


def test_pool_files_are_hardlinks(repo: BuiltRepository, deb_dir: Path) -> None:
    originals = {p.stat().st_ino for p in deb_dir.rglob("*.deb")}
    linked = {(repo.root / p.filename).stat().st_ino for p in repo.packages}
    assert linked == originals


def test_rebuild_swaps_and_keeps_previous_by_hash(key: SigningKey, tmp_path: Path) -> None:
    debs, out = tmp_path / "debs", tmp_path / "srv" / "repo"
    build_deb(_spec("edge-a", "1.0"), debs, seed=1)
    first = build_repository(debs, out)
    assert first.release.architectures == ("amd64",)  # only arch: all packages
    assert not (out / "dists/stable/InRelease").exists()
    by_hash = out / "dists/edge/main/binary-amd64/by-hash/SHA256"
    digests = []
    for generation, name in enumerate(("edge-b", "edge-c", "edge-d")):
        build_deb(_spec(name, "2.0"), debs, seed=generation)
        built = build_repository(debs, out, suite="edge", signing_key=key)
        assert len(built.packages) == generation + 2
        digests.append(built.release.files["main/binary-amd64/Packages"].sha256)
        assert (out / "dists/edge/InRelease").is_file()
    assert not (out / "dists" / "stable").exists()  # the tree is replaced as a whole
    assert sorted(os.listdir(tmp_path / "srv")) == ["repo"]  # no temp trees left behind
    # by-hash files of the previous generation survive one rebuild, then go.
    assert (by_hash / digests[2]).is_file() and (by_hash / digests[1]).is_file()
    assert not (by_hash / digests[0]).exists()


def test_valid_until_and_fixed_date(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    build_deb(_spec("edge-a"), tmp_path / "debs", seed=1)
    moment = datetime(2024, 2, 29, 13, 5, 9, tzinfo=UTC)
    built = build_repository(
        tmp_path / "debs", tmp_path / "r", codename="trixie", now=moment, valid_for=timedelta(7)
    )
    assert (built.release.suite, built.release.codename) == ("stable", "trixie")
    text = (built.root / "dists/stable/Release").read_text()
    assert "Date: Thu, 29 Feb 2024 13:05:09 UTC\n" in text
    assert "Valid-Until: Thu, 07 Mar 2024 13:05:09 UTC\n" in text
    assert built.release.date == "Thu, 29 Feb 2024 13:05:09 UTC"


def test_bad_build_arguments(tmp_path: Path) -> None:
    (tmp_path / "repo" / "incoming").mkdir(parents=True)
    with pytest.raises(ValueError):
        build_repository(tmp_path / "repo" / "incoming", tmp_path / "repo")
    with pytest.raises(ValueError):
        build_repository(tmp_path, tmp_path / "out", suite="../x")


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is not installed")
def test_apt_get_accepts_the_repository(
    repo: BuiltRepository, keyring: Path, tmp_path: Path
) -> None:
    for d in ("lists/partial", "cache/archives/partial", "dl"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "status").write_text("")
    sources = tmp_path / "sources.list"
    sources.write_text(f"deb [signed-by={keyring}] file:{repo.root} stable main\n")
    opts = {
        "Dir::State::status": tmp_path / "status",
        "Dir::State::Lists": tmp_path / "lists",
        "Dir::Cache": tmp_path / "cache",
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": "/dev/null",
        "Dir::Etc::Parts": "/dev/null",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": "/dev/null",
        "APT::Architecture": "amd64",
        "APT::Sandbox::User": "root",  # the _apt user cannot read pytest's 0700 tmp dirs
        "Debug::NoLocking": "1",
    }
    argv = ["apt-get", "-q"] + [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def apt(*args: str) -> str:
        proc = subprocess.run(
            argv + list(args), capture_output=True, text=True, cwd=tmp_path / "dl", check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "W:" not in proc.stderr and "E:" not in proc.stderr, proc.stderr
        return proc.stdout

    apt("update")
    plan = apt("-s", "install", "edge-compute-node")
    assert "Inst edge-compute-node" in plan and "Inst edge-chrony" in plan
    apt("download", "edge-zst")
    assert len(list((tmp_path / "dl").glob("edge-zst_*.deb"))) == 1


# --------------------------------------------------------------------------- parse_release

RELEASE = (
    "Origin: x\nSuite: stable\nCodename: bookworm\nDate: Sat, 01 Jun 2024 00:00:00 UTC\n"
    "Architectures: amd64 arm64\nComponents: main contrib\nAcquire-By-Hash: yes\n"
    f"MD5Sum:\n {'c' * 32} 12 main/binary-amd64/Packages\n"
    f"SHA256:\n {SHA} 12 main/binary-amd64/Packages\n {SHA.upper()}  7 main/Contents-amd64.gz\n"
)


def _clearsign(body: str, escape_all: bool = False) -> str:
    lines = [("- " + ln) if escape_all or ln.startswith("-") else ln for ln in body.splitlines()]
    sig = "-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
    return "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + "\n".join(lines) + "\n" + sig


def test_parse_plain_release() -> None:
    index = parse_release(RELEASE.encode(), "Release")
    assert (index.suite, index.codename, index.acquire_by_hash) == ("stable", "bookworm", True)
    assert index.architectures == ("amd64", "arm64")
    assert index.components == ("main", "contrib")
    assert index.files["main/Contents-amd64.gz"].sha256 == SHA  # lower-cased
    assert index.files["main/Contents-amd64.gz"].size == 7
    assert parse_release(RELEASE.replace("\n", "\r\n").encode(), "crlf") == index


def test_parse_dash_escaped_inrelease() -> None:
    plain = parse_release(RELEASE.encode(), "Release")
    assert parse_release(_clearsign(RELEASE).encode(), "InRelease") == plain
    assert parse_release(_clearsign(RELEASE, escape_all=True).encode(), "InRelease") == plain


def test_real_gpg_accepts_our_dash_escaping(
    repo: BuiltRepository, keyring: Path, tmp_path: Path
) -> None:
    """Dash-escaping every signed line keeps the signature valid and the parse unchanged."""
    text = (repo.root / "dists/stable/InRelease").read_text()
    head, rest = text.split("\n\n", 1)
    body, sig = rest.split("-----BEGIN PGP SIGNATURE-----", 1)
    escaped = "".join("- " + ln for ln in body.splitlines(keepends=True))
    target = tmp_path / "InRelease"
    target.write_text(f"{head}\n\n{escaped}-----BEGIN PGP SIGNATURE-----{sig}")
    assert _gpgv(keyring, target, home=tmp_path / "h").returncode == 0
    assert parse_release(target.read_bytes(), "escaped") == repo.release


BAD_RELEASES: list[tuple[str, bytes, int | None, str]] = [
    ("empty", b"", None, "empty"),
    ("blank", b"\n \n", None, "empty"),
    ("no sha256", b"Origin: x\nMD5Sum:\n " + b"c" * 32 + b" 1 a\n", None, "SHA256"),
    ("short hex", f"Origin: x\nSHA256:\n {SHA[:-2]} 12 main/P\n".encode(), 3, "hex"),
    ("bad hex", f"Origin: x\nSHA256:\n {'zz' * 32} 12 main/P\n".encode(), 3, "hex"),
    ("bad size", f"Origin: x\nSHA256:\n {SHA} 1x2 main/P\n".encode(), 3, "integer"),
    ("negative size", f"SHA256:\n {SHA} -1 main/P\n".encode(), 2, "integer"),
    ("two tokens", f"Origin: x\nSHA256:\n {SHA} 12\n".encode(), 3, "hash size path"),
    ("dotdot", f"SHA256:\n {SHA} 1 main/../../etc/passwd\n".encode(), 2, "unsafe"),
    ("absolute", f"SHA256:\n {SHA} 1 /etc/passwd\n".encode(), 2, "unsafe"),
    ("leading dotdot", f"SHA256:\n {SHA} 1 ../x\n".encode(), 2, "unsafe"),
    ("garbage", f"Origin: x\nhello world\nSHA256:\n {SHA} 1 a\n".encode(), 2, "not a field"),
    ("binary", b"Origin: x\n\x00\x01\x02\xff", 2, "binary"),
    ("not utf8", b"Origin: x\nLabel: \xff\xfe\n", 2, "UTF-8"),
    ("two paragraphs", f"SHA256:\n {SHA} 1 a\n\nOrigin: y\n".encode(), 4, "paragraph"),
    ("value on head", f"SHA256: {SHA} 1 a\n".encode(), 1, "own line"),
    ("duplicate", f"Suite: a\nSuite: b\nSHA256:\n {SHA} 1 a\n".encode(), 2, "duplicate"),
    ("conflict", f"SHA256:\n {SHA} 1 a\n {SHA} 2 a\n".encode(), 3, "conflicting"),
    ("orphan", f" continued\nSHA256:\n {SHA} 1 a\n".encode(), 1, "continuation"),
    ("bad md5", f"MD5Sum:\n {SHA} 1 a\nSHA256:\n {SHA} 1 a\n".encode(), 2, "32 hex"),
]


@pytest.mark.parametrize(
    ("data", "line", "needle"), [c[1:] for c in BAD_RELEASES], ids=[c[0] for c in BAD_RELEASES]
)
def test_malformed_release(data: bytes, line: int | None, needle: str) -> None:
    with pytest.raises(MalformedIndexError) as info:
        parse_release(data, "Release")
    assert info.value.line == line
    assert info.value.source == "Release"
    assert needle in str(info.value)
    expected_prefix = "Release" if line is None else f"Release (line {line}): "
    assert str(info.value).startswith(expected_prefix)


SIGNED = _clearsign(f"Origin: x\nSHA256:\n {SHA} 1 a")  # body lines 4..6
BAD_INRELEASES: list[tuple[str, str, int | None, str]] = [
    ("junk before", "junk\n" + SIGNED, 1, "before the signed message"),
    ("unescaped dash", SIGNED.replace("Origin: x", "-Origin: x"), 4, "dash-escaped"),
    ("no signature", SIGNED.split("-----BEGIN PGP SIGNATURE")[0], None, "truncated"),
    ("no end", SIGNED.replace("-----END PGP SIGNATURE-----\n", ""), None, "truncated"),
    ("junk after", SIGNED + "Origin: evil\n", 12, "after the signature"),
    ("bad header", SIGNED.replace("Hash: SHA256", "Hash SHA256"), 2, "armor header"),
    ("garbage inside", SIGNED.replace("Origin: x", "Origin x"), 4, "not a field"),
    ("nested armor", SIGNED.replace("=abcd", "-----BEGIN PGP X"), 10, "armor line"),
]


@pytest.mark.parametrize(
    ("text", "line", "needle"), [c[1:] for c in BAD_INRELEASES], ids=[c[0] for c in BAD_INRELEASES]
)
def test_malformed_inrelease(text: str, line: int | None, needle: str) -> None:
    assert parse_release(SIGNED.encode(), "ok").files["a"].size == 1
    with pytest.raises(MalformedIndexError) as info:
        parse_release(text.encode(), "InRelease")
    assert (info.value.line, needle in str(info.value)) == (line, True), str(info.value)


# --------------------------------------------------------------------------- parse_packages


def _stanza(name: str = "foo", **override: str) -> str:
    fields = {
        "Package": name,
        "Version": "1.0-1",
        "Architecture": "amd64",
        "Depends": "libc6 (>= 2.34), bar | baz",
        "Filename": f"pool/main/f/{name}/{name}_1.0-1_amd64.deb",
        "Size": "1234",
        "SHA256": SHA,
        "Description": "short\n long line\n .\n more",
    }
    fields.update(override)
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v != "<drop>")


def test_parse_packages_basic() -> None:
    text = _stanza("foo") + "\n" + _stanza("bar", SHA256=SHA.upper()) + "\n\n\n"
    entries = parse_packages(text.encode(), "Packages")
    assert entries == [
        PoolEntry("foo", "1.0-1", "amd64", "pool/main/f/foo/foo_1.0-1_amd64.deb", 1234, SHA),
        PoolEntry("bar", "1.0-1", "amd64", "pool/main/f/bar/bar_1.0-1_amd64.deb", 1234, SHA),
    ]
    assert parse_packages(b"", "empty") == [] and parse_packages(b"\n\n", "blank") == []
    no_newline = _stanza("foo").rstrip("\n").encode()
    assert parse_packages(no_newline, "P")[0].sha256 == SHA
    lower = _stanza("foo").replace("Package:", "package:").replace("SHA256:", "sha256:")
    assert parse_packages(lower.encode(), "P") == entries[:1]
    spaced = _stanza("foo", Size="1234  ").replace("Package: foo", "Package:foo")
    assert parse_packages(spaced.encode(), "P") == entries[:1]


GOOD = _stanza("ok") + "\n"  # 11 lines + a blank one: the bad stanza starts on line 13
BAD_PACKAGES: list[tuple[str, str, int, str]] = [
    ("no package", _stanza(Package="<drop>"), 13, "without Package"),
    ("no filename", _stanza(Filename="<drop>"), 13, "without Filename"),
    ("no size", _stanza(Size="<drop>"), 13, "without Size"),
    ("no sha256", _stanza(SHA256="<drop>"), 13, "without SHA256"),
    ("no version", _stanza(Version="<drop>"), 13, "without Version"),
    ("empty package", _stanza(Package=""), 13, "without Package"),
    ("only other fields", "Foo: bar\nBaz: qux\n", 13, "without Package"),
    ("bad size", _stanza(Size="12k"), 18, "bad Size"),
    ("negative size", _stanza(Size="-1"), 18, "bad Size"),
    ("short hex", _stanza(SHA256=SHA[:63]), 19, "64 hex"),
    ("bad hex", _stanza(SHA256="g" * 64), 19, "64 hex"),
    ("dotdot", _stanza(Filename="pool/../../../etc/shadow"), 17, "unsafe Filename"),
    ("absolute", _stanza(Filename="/etc/shadow"), 17, "unsafe Filename"),
    ("backslash", _stanza(Filename="pool\\..\\x.deb"), 17, "unsafe Filename"),
    ("duplicate", _stanza() + "Package: other\n", 24, "duplicate Package"),
    ("duplicate any case", _stanza() + "PACKAGE: other\n", 24, "duplicate Package"),
    ("garbage", _stanza().replace("Depends:", "Depends"), 16, "not a field"),
    ("orphan", "\n continuation\n" + _stanza(), 14, "continuation"),
]


@pytest.mark.parametrize(
    ("stanza", "line", "needle"), [c[1:] for c in BAD_PACKAGES], ids=[c[0] for c in BAD_PACKAGES]
)
def test_malformed_packages(stanza: str, line: int, needle: str) -> None:
    with pytest.raises(MalformedIndexError) as info:
        parse_packages((GOOD + stanza).encode(), "Packages")
    assert (info.value.line, needle in str(info.value)) == (line, True), str(info.value)
    assert str(info.value).startswith(f"Packages (line {line}): ")


def test_packages_not_utf8_or_binary() -> None:
    data = GOOD.encode() + _stanza().encode().replace(b"short", b"sh\xffrt")
    with pytest.raises(MalformedIndexError, match="UTF-8") as info:
        parse_packages(data, "Packages")
    assert info.value.line == 20
    with pytest.raises(MalformedIndexError, match="binary") as info:
        parse_packages(GOOD.encode() + b"\x00\x00", "Packages")
    assert info.value.line == 13


def test_parse_packages_handles_archive_sized_index() -> None:
    """A Debian-main-sized index (63k stanzas, ~50 MB) parses completely (speed is measured in
    benchmarks, not asserted here)."""
    filler = "".join(f" {'x' * 70}\n" for _ in range(6))
    body = "".join(_stanza(f"pkg{i}") + filler + "\n" for i in range(63_000)).encode()
    assert len(body) > 40_000_000
    entries = parse_packages(body, "big")
    assert len(entries) == 63_000 and entries[-1].package == "pkg62999"


_names = st.from_regex(r"[a-z0-9][a-z0-9+.-]{0,20}", fullmatch=True)
_versions = st.from_regex(r"([1-9]:)?[0-9][a-z0-9.+~]{0,8}(-[0-9a-z.+~]{1,5})?", fullmatch=True)
_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(_names, _versions, st.integers(0, 2**40), st.binary(min_size=32, max_size=32)),
        max_size=8,
    ),
    st.lists(st.tuples(st.sampled_from(["X-A", "Depends", "Tag"]), _values), max_size=3),
)
def test_parse_packages_scanner_handles_any_field_order(
    rows: list[tuple[str, str, int, bytes]], extra: list[tuple[str, str]]
) -> None:
    expected = [
        PoolEntry(n, v, "all", f"pool/main/{n[0]}/{n}/{n}_{v}_all.deb", s, d.hex())
        for n, v, s, d in rows
    ]
    stanzas = []
    for i, e in enumerate(expected):
        fields = [
            ("Filename", e.filename),
            ("SHA256", e.sha256),
            ("Package", e.package),
            ("Size", str(e.size)),
            ("Architecture", e.architecture),
            ("Version", e.version),
        ] + [(k, v or "x") for k, v in extra]
        fields = fields[i % len(fields) :] + fields[: i % len(fields)]  # rotate the order
        stanzas.append("".join(f"{k}: {v}\n" for k, v in dict(fields).items()))
    assert parse_packages("\n".join(stanzas).encode(), "P") == expected


_deb_specs = st.lists(
    st.builds(
        lambda name, version, arch, desc: _spec(
            "edge-h" + name, version, arch, description=desc or "x", payload_bytes=512
        ),
        _names,
        _versions,
        st.sampled_from(["all", "amd64", "riscv64"]),
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(
            lambda s: s.replace("\n", " ")
        ),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda s: (s.name, Version(s.version), s.architecture),
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_deb_specs)
def test_parse_packages_round_trips_build_repository(
    tmp_path: Path, specs: list[SampleDeb]
) -> None:
    work = tmp_path / f"case-{os.urandom(4).hex()}"
    for i, spec in enumerate(specs):
        build_deb(spec, work / "debs" / str(i), seed=i)
    built = build_repository(work / "debs", work / "repo")
    for arch in built.release.architectures:
        rel = f"main/binary-{arch}/Packages"
        parsed = parse_packages((built.root / "dists/stable" / rel).read_bytes(), rel)
        assert parsed == [p for p in built.packages if p.architecture in (arch, "all")]
        xz = (built.root / "dists/stable" / f"{rel}.xz").read_bytes()
        assert parse_packages(decompress_index(rel + ".xz", xz), rel) == parsed
    assert {(p.package, p.version) for p in built.packages} == {(s.name, s.version) for s in specs}
    shutil.rmtree(work)


# --------------------------------------------------------------------------- decompress_index


def test_decompress_round_trips() -> None:
    raw = _stanza().encode() * 50
    assert decompress_index("dists/x/Packages", raw) == raw
    assert decompress_index("Packages.gz", gzip.compress(raw)) == raw
    assert decompress_index("Packages.xz", lzma.compress(raw)) == raw
    assert decompress_index("Packages.bz2", bz2.compress(raw)) == raw
    assert decompress_index("Packages.zst", zstd.compress(raw)) == raw
    two_members = gzip.compress(raw[:100]) + gzip.compress(raw[100:])
    assert decompress_index("Packages.gz", two_members) == raw


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2", ".zst"])
def test_decompress_corrupt(suffix: str) -> None:
    raw = _stanza().encode() * 50
    compressors: dict[str, Callable[[bytes], bytes]] = {
        ".gz": gzip.compress,
        ".xz": lzma.compress,
        ".bz2": bz2.compress,
        ".zst": zstd.compress,
    }
    good = compressors[suffix](raw)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    for bad in (good[: len(good) // 2], bytes(flipped), b"not compressed at all", b""):
        with pytest.raises(MalformedIndexError) as info:
            decompress_index("main/binary-amd64/Packages" + suffix, bad)
        assert info.value.source == "main/binary-amd64/Packages" + suffix
        assert info.value.line is None


def test_decompress_lz4_optional() -> None:
    try:
        import lz4.frame  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        with pytest.raises(MalformedIndexError, match="not installed"):
            decompress_index("Packages.lz4", b"\x04\x22\x4d\x18")
    else:
        raw = _stanza().encode()
        assert decompress_index("Packages.lz4", lz4.frame.compress(raw)) == raw


def test_malformed_error_attributes() -> None:
    err = MalformedIndexError(source="Packages", line=42, message="stanza without Package field")
    assert str(err) == "Packages (line 42): stanza without Package field"
    assert (err.source, err.line, err.message) == ("Packages", 42, "stanza without Package field")
    assert isinstance(err, ValueError)
    assert str(replace(PoolEntry("a", "1", "all", "f", 1, SHA), size=2).size) == "2"
