"""Configuration layering and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache_node.answers import BadRequest, safe_relpath
from cache_node.config import ConfigError, load_config
from distro.digests import format_repr_digest, parse_repr_digest
from distro.sizes import parse_size


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    (tmp_path / "debs").mkdir()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'role = "origin"\nlisten = "127.0.0.1:9000"\nstore = "{tmp_path}/s"\n'
                   f'[index]\nttl = 10\n[apt.main]\nsource = "{tmp_path}/debs"\n')
    config = load_config(cfg, {"EDGEDEPOT_INDEX_TTL": "20", "EDGEDEPOT_LISTEN": "127.0.0.1:9001"},
                         {"listen": "127.0.0.1:0"})
    assert config.index_ttl == 20.0 and config.listen_port == 0
    assert config.apt_repo("main") is not None and config.role == "origin"


def test_cache_needs_upstream() -> None:
    with pytest.raises(ConfigError, match="upstream"):
        load_config(None, {}, {"role": "cache", "store": "/tmp/x"})


@pytest.mark.parametrize("flags, message", [
    ({"role": "edge"}, "role"),
    ({"role": "cache", "upstream": "ftp://x", "store": "/tmp/x"}, "upstream"),
    ({"role": "cache", "upstream": "http://h", "listen": "nowhere", "store": "/t"}, "listen"),
    ({"role": "cache", "upstream": "http://h", "quota": "lots", "store": "/t"}, "quota"),
    ({"role": "cache", "upstream": "http://h", "index_ttl": "-1", "store": "/t"}, "negative"),
])
def test_invalid_values_name_the_key(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {}, flags)


def test_repo_flags(tmp_path: Path) -> None:
    config = load_config(None, {}, {"role": "origin", "store": str(tmp_path)},
                         apt_flags=[f"main={tmp_path}", "deb=http://mirror.invalid/debian"])
    deb = config.apt_repo("deb")
    assert deb is not None and deb.is_url and deb.source.endswith("/")
    with pytest.raises(ConfigError):
        load_config(None, {}, {"role": "origin", "store": str(tmp_path)}, apt_flags=["nonsense"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, {}, {"role": "origin", "store": str(tmp_path)},
                    apt_flags=[f"x={tmp_path}/missing"])


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('role = "cache"\nupstream = "http://h"\nstore = "s"\nquotta = "1G"\n')
    with pytest.raises(ConfigError, match="quotta"):
        load_config(cfg, {}, {})


def test_parse_size() -> None:
    assert parse_size("50G") == 50 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1000") == 1000
    assert parse_size("") is None


@pytest.mark.parametrize("decoded, raw", [
    ("../etc/passwd", None), ("a/../../b", None), ("a//b", None), ("/etc/passwd", None),
    ("a/%2e%2e/b", None), ("pool/..\\x", None), ("x", "/apt/m/%2e%2e"), ("x", "/apt/%2F"),
    ("a\x00b", None),
])
def test_safe_relpath_refuses_traversal(decoded: str, raw: str | None) -> None:
    with pytest.raises(BadRequest):
        safe_relpath(decoded, raw)


def test_safe_relpath_accepts_normal_paths() -> None:
    assert safe_relpath("pool/main/e/x/x_1.0+b1_all.deb", "/apt/m/pool/main/e/x/x_1.0+b1_all.deb")


def test_repr_digest_round_trip() -> None:
    digest = "ab" * 32
    assert parse_repr_digest(format_repr_digest(digest)) == digest
    assert parse_repr_digest("sha-512=:AAAA:") is None
    assert parse_repr_digest("garbage") is None
