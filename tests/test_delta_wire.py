"""The delta wire format pieces and the `distro-sync delta` command."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distro.digests import format_repr_digest, parse_repr_digest
from syncer.cli import main as cli_main
from syncer.delta_wire import (
    WireError,
    decode_ranges,
    encode_ranges,
    parse_blob_url,
)
from tests.test_delta_e2e import DeltaServer, mutate, random_bytes, start_server


@st.composite
def range_lists(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    end = 0
    for _ in range(draw(st.integers(0, 40))):
        gap = draw(st.integers(0, 1 << 40))
        length = draw(st.integers(1, 1 << 33))
        out.append((end + gap, length))
        end += gap + length
    return tuple(out)


@given(range_lists())
def test_ranges_roundtrip(ranges: tuple[tuple[int, int], ...]) -> None:
    size = ranges[-1][0] + ranges[-1][1] if ranges else 0
    assert decode_ranges(encode_ranges(ranges), size) == ranges


def test_ranges_rejects_bad_input() -> None:
    good = encode_ranges([(0, 10), (20, 5)])
    with pytest.raises(WireError):
        decode_ranges(good, 24)  # beyond the blob
    with pytest.raises(WireError):
        decode_ranges(good[:-1], 100)
    with pytest.raises(WireError):
        decode_ranges(good + b"\x00", 100)
    with pytest.raises(WireError):
        decode_ranges(b"EDRG\x02" + good[5:], 100)
    with pytest.raises(WireError):
        encode_ranges([(10, 5), (12, 5)])
    with pytest.raises(WireError):
        encode_ranges([(0, 0)])


def test_digest_headers_and_urls() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert parse_repr_digest(format_repr_digest(sha)) == sha
    assert parse_repr_digest("sha-512=:AAAA:") is None
    url = parse_blob_url(f"http://h:1/prefix/delta/v1/blobs/{sha}")
    assert url.base == "http://h:1/prefix" and url.sha256 == sha
    assert url.patch.endswith(f"/delta/v1/blobs/{sha}/patch")
    with pytest.raises(WireError):
        parse_blob_url("http://h/blobs/123")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DeltaServer]:
    srv = await start_server(tmp_path / "srv")
    yield srv
    await srv.runner.cleanup()
    srv.store.close()


async def test_cli_delta(server: DeltaServer, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    basis = random_bytes(300_000, 40)
    target = mutate(basis, 41)
    server.add(basis)
    sha = server.add(target)
    (tmp_path / "basis").write_bytes(basis)
    for mode in ("auto", "blocks"):
        out = tmp_path / f"out-{mode}"
        code = await asyncio.to_thread(cli_main, [
            "delta", server.url(sha), "--basis", str(tmp_path / "basis"), "-o", str(out),
            "--path", mode, "--block-size", "1024"])
        assert code == 0 and out.read_bytes() == target
    printed = capsys.readouterr().out
    assert "via patch" in printed and "via blocks" in printed and "bytes received" in printed
    code = await asyncio.to_thread(cli_main, [
        "delta", server.url("0" * 64), "--basis", str(tmp_path / "basis"),
        "-o", str(tmp_path / "nothing")])
    assert code == 1 and not (tmp_path / "nothing").exists()
    assert "DeltaUnavailable" in capsys.readouterr().err
