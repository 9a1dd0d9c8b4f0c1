"""Configuration layering and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache_node.answers import BadRequest, safe_relpath
from cache_node.config import (
    SETTINGS,
    ConfigError,
    ConfigSources,
    ListenAddress,
    TlsServerSettings,
    delta_client_settings,
    load_config,
    load_defaults,
    parse_size,
    plan_reload,
    settings_view,
)
from distro.digests import format_repr_digest, parse_repr_digest
from tests.plugin.pki import write_cert_and_key


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    (tmp_path / "debs").mkdir()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'role = "origin"\nlisten = "127.0.0.1:9000"\nstore = "{tmp_path}/s"\n'
                   f'[index]\nttl = 10\n[apt.main]\nsource = "{tmp_path}/debs"\n')
    config = load_config(cfg, {"EDGEDEPOT_INDEX_TTL": "20", "EDGEDEPOT_LISTEN": "127.0.0.1:9001"},
                         {"listen": "127.0.0.1:0"})
    assert config.index_ttl == 20.0 and config.listen == ListenAddress("127.0.0.1", 0)
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


# --------------------------------------------------------------------------- issue 10 settings

CACHE = {"role": "cache", "upstream": "https://origin.example:8443", "store": "/tmp/s"}


def test_every_setting_has_a_packaged_default_and_loading_is_repeatable() -> None:
    first = load_config(None, {}, CACHE)
    again = ConfigSources(None, {}, CACHE).load()
    assert first == again and first is not again
    assert first.listen == ListenAddress("127.0.0.1", 8080) and first.drain_timeout == 30.0
    assert first.tls == TlsServerSettings() and first.allow == () and first.access_log is None
    defaults = load_defaults()
    for setting in SETTINGS:
        section, _, leaf = setting.key.rpartition(".")
        assert leaf in (defaults[section] if section else defaults), setting.key


def test_tls_listener_validated(tmp_path: Path) -> None:
    cert, key = write_cert_and_key(tmp_path, "node")
    other_cert, other_key = write_cert_and_key(tmp_path, "other")
    tls = {**CACHE, "tls_listen": "[::1]:8443", "tls_cert": str(cert), "tls_key": str(key)}
    config = load_config(None, {}, tls)
    assert config.listen is None, "a node may listen on TLS only"
    assert config.tls.listen == ListenAddress("::1", 8443) and config.tls.cert == cert
    both = load_config(None, {}, {**tls, "listen": "0.0.0.0:8080", "tls_client_ca": str(cert)})
    assert both.listen == ListenAddress("0.0.0.0", 8080) and both.tls.client_ca == cert
    with pytest.raises(ConfigError, match=rf"tls.key \(from --tls-key\): {other_key} is not the "
                                          rf"key of certificate {cert}"):
        load_config(None, {}, {**tls, "tls_key": str(other_key)})
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(ConfigError, match="tls.cert .*junk.pem holds no PEM certificate"):
        load_config(None, {}, {**tls, "tls_cert": str(tmp_path / "junk.pem")})
    with pytest.raises(ConfigError, match="tls.client_ca .*missing.pem does not exist"):
        load_config(None, {}, {**tls, "tls_client_ca": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="tls.listen needs tls.cert and tls.key"):
        load_config(None, {}, {**CACHE, "tls_listen": "0.0.0.0:8443"})
    with pytest.raises(ConfigError, match="tls.cert set but tls.listen"):
        load_config(None, {}, {**CACHE, "tls_cert": str(other_cert)})
    with pytest.raises(ConfigError, match="IPv6 address goes in brackets"):
        load_config(None, {}, {**tls, "tls_listen": "::1:8443"})


def test_encrypted_and_expired_keys_refused(tmp_path: Path) -> None:
    cert, key = write_cert_and_key(tmp_path, "locked", passphrase=b"secret")
    with pytest.raises(ConfigError, match="is encrypted"):
        load_config(None, {}, {**CACHE, "upstream_client_cert": str(cert),
                               "upstream_client_key": str(key)})
    old_cert, old_key = write_cert_and_key(tmp_path, "old", days=-2)
    with pytest.raises(ConfigError, match="expired on"):
        load_config(None, {}, {**CACHE, "tls_listen": "127.0.0.1:0", "tls_cert": str(old_cert),
                               "tls_key": str(old_key)})


def test_upstream_tls_validated(tmp_path: Path) -> None:
    cert, key = write_cert_and_key(tmp_path, "client")
    config = load_config(None, {}, {**CACHE, "upstream_ca": str(cert),
                                    "upstream_client_cert": str(cert),
                                    "upstream_client_key": str(key)})
    assert config.upstream_tls.client_key == key and not config.warnings
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, {}, {**CACHE, "upstream_client_cert": str(cert)})
    plain = load_config(None, {}, {**CACHE, "upstream": "http://127.0.0.1:9",
                                   "upstream_ca": str(cert)})
    assert any("no upstream uses https" in w for w in plain.warnings)


@pytest.mark.parametrize("upstream, extra, ok", [
    ("http://127.0.0.1:8080", {}, True),
    ("http://localhost:8080", {}, True),
    ("http://[::1]:8080", {}, True),
    ("https://origin.example", {}, True),
    ("http://origin.example:8080", {}, False),
    ("http://10.1.2.3:8080", {}, False),
    ("http://10.1.2.3:8080", {"glance_forward_tokens_over_plain_http": "true"}, True),
    ("http://10.1.2.3:8080", {"glance_enabled": "false"}, True),
])
def test_tokens_never_cross_plain_http_unless_allowed_by_name(
        upstream: str, extra: dict[str, str], ok: bool) -> None:
    flags = {**CACHE, "upstream": upstream, **extra}
    if ok:
        assert load_config(None, {}, flags).upstream == upstream + "/"
    else:
        with pytest.raises(ConfigError, match="glance.forward_tokens_over_plain_http"):
            load_config(None, {}, flags)


def test_origin_glance_upstream_plain_http_checked(tmp_path: Path) -> None:
    origin = {"role": "origin", "store": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^glance.upstream http://glance.example:9292/ is plain"):
        load_config(None, {}, {**origin, "glance_upstream": "http://glance.example:9292"})
    assert load_config(None, {}, {**origin, "glance_upstream": "http://127.0.0.1:9292"}).glance


def test_allow_networks_and_client_check() -> None:
    config = load_config(None, {"EDGEDEPOT_ALLOW": "10.0.0.0/8, 2001:db8::/32"},
                         {**CACHE, "allow": ["192.0.2.7"]})
    assert [str(n) for n in config.allow] == ["192.0.2.7/32"], "flags win over environment"
    config = load_config(None, {"EDGEDEPOT_ALLOW": "10.0.0.0/8,2001:db8::/32"}, CACHE)
    assert config.client_allowed("10.9.8.7") and config.client_allowed("::ffff:10.0.0.1")
    assert config.client_allowed("2001:db8::5") and not config.client_allowed("192.0.2.1")
    assert load_config(None, {}, CACHE).client_allowed("203.0.113.9"), "empty: everyone"
    with pytest.raises(ConfigError, match="'banana' is not an IP network"):
        load_config(None, {}, {**CACHE, "allow": ["banana"]})


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("10.0.0.5", "192.0.2.7", "192.0.2.7"),                 # the front names the site
    ("10.0.0.5", "198.51.100.1, 192.0.2.7", "192.0.2.7"),   # what the site wrote is not believed
    ("10.0.0.5", "192.0.2.7, 10.0.0.6", "192.0.2.7"),       # two fronts in a row
    ("10.0.0.5", "10.0.0.6", "10.0.0.6"),                   # only proxies: the first of them
    ("10.0.0.5", "not-an-ip", "10.0.0.5"),                  # malformed: the proxy itself
    ("10.0.0.5", "", "10.0.0.5"),
    ("::ffff:10.0.0.5", "2001:db8::9", "2001:db8::9"),      # an IPv4-mapped front
    ("192.0.2.99", "192.0.2.7", "192.0.2.99"),              # not a trusted peer: ignored
])
def test_trusted_proxies_name_the_client(peer: str, forwarded: str, client: str) -> None:
    config = load_config(None, {"EDGEDEPOT_TRUSTED_PROXIES": "10.0.0.0/24"}, CACHE)
    assert config.client_address(peer, forwarded) == client
    assert load_config(None, {}, CACHE).client_address(peer, forwarded) == peer, "default: none"
    with pytest.raises(ConfigError, match="'front' is not an IP network"):
        load_config(None, {}, {**CACHE, "trusted_proxies": ["front"]})


def test_admin_token_from_file_or_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    config = load_config(None, {}, {**CACHE, "admin_token_file": str(token_file)})
    assert config.admin.token == "s3cret-token" and "s3cret" not in repr(config)
    assert not config.warnings
    assert load_config(None, {"EDGEDEPOT_ADMIN_TOKEN": "t0ken"}, CACHE).admin.token == "t0ken"
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, {"EDGEDEPOT_ADMIN_TOKEN": "t0ken"},
                    {**CACHE, "admin_token_file": str(token_file)})
    token_file.chmod(0o644)
    config = load_config(None, {}, {**CACHE, "admin_token_file": str(token_file)})
    assert any("chmod 600" in w for w in config.warnings)
    token_file.write_text("")
    with pytest.raises(ConfigError, match="one token on one line"):
        load_config(None, {}, {**CACHE, "admin_token_file": str(token_file)})


def test_access_log_and_drain_timeout(tmp_path: Path) -> None:
    config = load_config(None, {"EDGEDEPOT_DRAIN_TIMEOUT": "5"},
                         {**CACHE, "access_log": str(tmp_path / "access.log"),
                          "access_log_format": "JSON"})
    assert config.drain_timeout == 5.0 and config.access_log_format == "json"
    assert load_config(None, {}, {**CACHE, "access_log": "-"}).access_log == "-"
    with pytest.raises(ConfigError, match="directory .*nowhere does not exist"):
        load_config(None, {}, {**CACHE, "access_log": str(tmp_path / "nowhere" / "a.log")})


def test_nested_typos_name_the_full_key(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('role = "cache"\nupstream = "http://127.0.0.1:9"\n[pypi.local]\n'
                   'source = "/srv"\nsuite = "x"\n')
    with pytest.raises(ConfigError, match=r"^unknown key pypi.local.suite in .*n.toml"):
        load_config(cfg, {}, {})
    cfg.write_text('[apt]\nmain = "/srv/debs"\n')
    with pytest.raises(ConfigError, match=r"apt.main in .*expected a table \[apt.main\]"):
        load_config(cfg, {}, {})


# --------------------------------------------------------------------------- reload


def test_reload_compares_every_setting() -> None:
    """A setting added to SETTINGS but not to `settings_view` would be ignored by reloads."""
    view = settings_view(load_config(None, {}, CACHE))
    assert {s.key for s in SETTINGS} <= set(view)


def test_reload_applies_what_can_change_and_keeps_what_needs_a_restart(tmp_path: Path) -> None:
    cert, key = write_cert_and_key(tmp_path, "server")
    running = load_config(None, {}, {**CACHE, "listen": "127.0.0.1:8080",
                                     "tls_listen": "127.0.0.1:8443", "tls_cert": str(cert),
                                     "tls_key": str(key)})
    renewed, renewed_key = write_cert_and_key(tmp_path, "renewed")
    loaded = load_config(None, {}, {
        **CACHE, "upstream": "https://new-origin.example/", "listen": "0.0.0.0:80",
        "store": str(tmp_path / "elsewhere"), "tls_listen": "127.0.0.1:9443",
        "tls_cert": str(renewed), "tls_key": str(renewed_key), "index_ttl": "5",
        "quota": "1G", "glance_auth_ttl": "3", "log_level": "debug", "drain_timeout": "4"})
    plan = plan_reload(running, loaded)
    assert set(plan.needs_restart) == {"listen", "store", "tls.listen"}
    assert set(plan.changed) == {"upstream", "tls.cert", "tls.key", "index.ttl", "quota",
                                 "glance.auth_ttl", "log_level", "drain_timeout"}
    c = plan.config
    assert c.listen == running.listen and c.store_dir == running.store_dir
    assert c.tls.listen == running.tls.listen and c.tls.cert == renewed
    assert c.upstream == "https://new-origin.example/" and c.index_ttl == 5.0
    assert c.quota_bytes == 1 << 30 and c.glance.auth_ttl == 3.0 and c.drain_timeout == 4.0
    # The one place names map to URLs follows the new upstream.
    apt = c.repo_source("apt", "main")
    assert apt is not None and apt.source == "https://new-origin.example/apt/main/"
    assert c.delta_url == "https://new-origin.example/delta/v1/"
    assert c.glance_upstream == "https://new-origin.example/glance/"
    assert not plan_reload(running, running).changed


def test_reload_cannot_add_remove_or_rebuild_repositories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = {"role": "origin", "store": str(tmp_path / "s")}
    running = load_config(None, {}, base, apt_flags=[f"local={tmp_path}/a",
                                                     "mirror=http://one.invalid/debian/"])
    moved = load_config(None, {}, base, apt_flags=[f"local={tmp_path}/a",
                                                   "mirror=http://two.invalid/debian/"])
    plan = plan_reload(running, moved)
    assert plan.changed == ("apt.mirror",) and not plan.needs_restart
    rebuilt = load_config(None, {}, base, apt_flags=[f"local={tmp_path}/b",
                                                     "mirror=http://one.invalid/debian/"])
    plan = plan_reload(running, rebuilt)
    assert plan.needs_restart == ("apt.local",) and plan.config.apt == running.apt
    fewer = load_config(None, {}, base, apt_flags=[f"local={tmp_path}/a"])
    plan = plan_reload(running, fewer)
    assert plan.needs_restart == ("apt.mirror",) and plan.config.apt == running.apt


def test_delta_clients_share_the_node_tls_settings_with_a_patch_long_timeout(
        tmp_path: Path) -> None:
    cert, key = write_cert_and_key(tmp_path, "client")
    config = load_config(None, {}, {**CACHE, "upstream_ca": str(cert),
                                    "upstream_client_cert": str(cert),
                                    "upstream_client_key": str(key)})
    settings = delta_client_settings(config)
    assert settings.ca_file == cert and settings.client_cert == cert
    assert settings.client_key == key and settings.read_timeout >= 600
