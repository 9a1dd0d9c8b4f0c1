"""Repository signing keys an operator can use: create one, check it at start, publish its
public half so sites can pin it.

- `generate_signing_key` is `cache-node keygen`: a passphrase-less key made by gpg in batch
  mode, its public half written as `repository.gpg` (binary, what apt's `signed-by=` wants)
  and `repository.asc` (armored).
- `check_signing_key` runs before an origin starts: it signs a few bytes with the configured
  key, so a wrong `--signing-key` ends in one line naming the key and the GnuPG home instead
  of a traceback from the first repository build.
- `KeyService` is what `/keys/repository.gpg` serves: on an origin the key exported from its
  GnuPG home; on a cache the key fetched from its upstream (kept on disk, so it is still served
  while the upstream is down). The fingerprint is computed here from the key bytes, never taken
  from a header, so every tier shows the fingerprint of what it really serves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cache_node.config import NodeConfig, client_settings
from cache_node.interprocess import FileLock
from cache_node.startup import StartupError
from distro.debian_repo import SigningKey
from distro.errors import EdgedepotError, IntegrityError
from syncer.http_client import HttpClient, UpstreamError, UpstreamNotFound

log = logging.getLogger(__name__)

KEY_DIR = "keys"                      # URL path prefix, and the cache's directory in its store
BINARY_NAME = "repository.gpg"
ARMORED_NAME = "repository.asc"
MAX_KEY_BYTES = 1 << 20
GPG_TIMEOUT = 120.0
RETRY_AFTER = 10.0                    # seconds before a failed upstream fetch is tried again
Algorithm = Literal["ed25519", "rsa4096"]


class KeyFormatError(ValueError):
    """Bytes that are not an OpenPGP public key (or that hold secret key material)."""


# --------------------------------------------------------------------------- OpenPGP bytes


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of every OpenPGP packet (RFC 4880 / 9580 framing, old and new format)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        first = data[pos]
        if not first & 0x80:
            raise KeyFormatError(f"not an OpenPGP packet at byte {pos}")
        if first & 0x40:  # new format
            tag = first & 0x3F
            if pos + 1 >= len(data):
                raise KeyFormatError("truncated packet header")
            o1 = data[pos + 1]
            if o1 < 192:
                length, head = o1, 2
            elif o1 < 224:
                if pos + 2 >= len(data):
                    raise KeyFormatError("truncated packet header")
                length, head = ((o1 - 192) << 8) + data[pos + 2] + 192, 3
            elif o1 == 255:
                length, head = int.from_bytes(data[pos + 2:pos + 6], "big"), 6
            else:
                raise KeyFormatError("partial body lengths do not occur in keys")
        else:  # old format
            tag, kind = (first >> 2) & 0x0F, first & 0x03
            if kind == 3:
                raise KeyFormatError("indeterminate packet length does not occur in keys")
            size = (1, 2, 4)[kind]
            length, head = int.from_bytes(data[pos + 1:pos + 1 + size], "big"), 1 + size
        body = data[pos + head:pos + head + length]
        if len(body) != length:
            raise KeyFormatError("truncated packet")
        out.append((tag, body))
        pos += head + length
    return out


def _fingerprint(body: bytes) -> str:
    """The fingerprint of a public-key packet body (v4: SHA-1; v5/v6: SHA-256)."""
    version = body[0] if body else 0
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if version in (5, 6):
        prefix = b"\x9a" if version == 5 else b"\x9b"
        return hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise KeyFormatError(f"unsupported OpenPGP key version {version}")


def primary_fingerprints(data: bytes) -> tuple[str, ...]:
    """Fingerprints of the primary keys in a binary keyring; refuses secret keys."""
    packets = _packets(data)
    if any(tag in (5, 7) for tag, _ in packets):
        raise KeyFormatError("contains secret key material")
    found = tuple(_fingerprint(body) for tag, body in packets if tag == 6)
    if not found:
        raise KeyFormatError("no public key in it")
    return found


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(data: bytes) -> bytes:
    """ASCII armor (RFC 4880 section 6) of a binary public key block."""
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    crc = base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    text = "\n".join(["-----BEGIN PGP PUBLIC KEY BLOCK-----", "", *lines, f"={crc}",
                      "-----END PGP PUBLIC KEY BLOCK-----", ""])
    return text.encode()


def format_fingerprint(fpr: str) -> str:
    """`ABCD 1234 ...` in groups of four, as gpg shows it (easier to compare by eye)."""
    return " ".join(fpr[i:i + 4] for i in range(0, len(fpr), 4))


@dataclass(frozen=True)
class PublicKey:
    """A repository's public signing key as served: binary bytes and its primary fingerprint."""

    data: bytes
    fingerprint: str

    @classmethod
    def parse(cls, data: bytes) -> PublicKey:
        fingerprints = primary_fingerprints(data)
        return cls(data, fingerprints[0])

    @property
    def armored(self) -> bytes:
        return armor(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# --------------------------------------------------------------------------- gpg


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = ["gpg", "--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback",
            "--passphrase", "", "--homedir", str(home), *args]
    try:
        return subprocess.run(argv, input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=GPG_TIMEOUT, check=False)
    except FileNotFoundError:
        raise StartupError("gpg is not installed (apt-get install gnupg)") from None
    except subprocess.TimeoutExpired:
        raise StartupError(f"gpg did not answer within {GPG_TIMEOUT:.0f}s "
                           f"(GnuPG home {home})") from None


def _gpg_complaint(stderr: bytes) -> str:
    """gpg's most telling stderr line, without the `gpg: ` prefix."""
    lines = [ln.removeprefix("gpg: ").strip()
             for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("WARNING: unsafe", "keybox", "directory"))]
    telling = [ln for ln in lines if "secret key" in ln.lower() or "skipped" in ln.lower()]
    return (telling or lines or ["no output"])[-1]


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent gpg started for this home (best effort): no daemon is left behind."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)


def secret_key_fingerprints(home: Path, key_id: str = "") -> list[str]:
    """Primary fingerprints of the secret keys in `home` that `key_id` names (all if empty)."""
    proc = _gpg(home, "--with-colons", "--list-secret-keys", *([key_id] if key_id else []))
    if proc.returncode != 0:
        return []
    out, want = [], False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            want = True
        elif fields[0] == "fpr" and want and len(fields) > 9:
            out.append(fields[9])
            want = False
    return out


def check_signing_key(key: SigningKey) -> str:
    """Sign a few bytes with the configured key; its fingerprint, or StartupError (one line)."""
    home, key_id = key.gnupg_home, key.key_id
    if not home.is_dir():
        raise StartupError(f"GnuPG home {home} does not exist (signing key {key_id})")
    found = secret_key_fingerprints(home, key_id)
    if not found:
        raise StartupError(f"signing key {key_id} not found in GnuPG home {home} "
                           f"(gpg --homedir {home} --list-secret-keys shows what is there)")
    proc = _gpg(home, "--local-user", key_id, "--detach-sign", "--output", "-",
                stdin=b"edgedepot signing check\n")
    if proc.returncode != 0 or not proc.stdout:
        raise StartupError(f"cannot sign with key {key_id} from GnuPG home {home}: "
                           f"{_gpg_complaint(proc.stderr)}")
    return found[0]


def export_public_key(key: SigningKey) -> PublicKey:
    """The public half of the signing key, minimal (self-signatures only)."""
    proc = _gpg(key.gnupg_home, "--export-options", "export-minimal", "--export", key.key_id)
    if proc.returncode != 0 or not proc.stdout:
        raise StartupError(f"cannot export public key {key.key_id} from GnuPG home "
                           f"{key.gnupg_home}: {_gpg_complaint(proc.stderr)}")
    try:
        return PublicKey.parse(proc.stdout)
    except KeyFormatError as exc:
        raise StartupError(f"gpg exported an unreadable key {key.key_id}: {exc}") from None


@dataclass(frozen=True)
class GeneratedKey:
    """What `cache-node keygen` made and where it wrote the public key."""

    gnupg_home: Path
    fingerprint: str
    uid: str
    binary_path: Path
    armored_path: Path

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]

    def config_lines(self) -> str:
        return (f'[signing]\ngnupg_home = "{self.gnupg_home}"\n'
                f'key_id = "{self.fingerprint}"\n')


_UID_SAFE = re.compile(r"[^<>\n\r]{1,100}")
_EMAIL = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def generate_signing_key(home: Path, name: str, email: str, algorithm: Algorithm = "ed25519",
                         export_dir: Path | None = None) -> GeneratedKey:
    """Create a passphrase-less repository signing key in `home` (created 0700 if missing)
    and write its public half; refuses a home that already holds a secret key."""
    if not _UID_SAFE.fullmatch(name) or not _EMAIL.fullmatch(email):
        raise StartupError(f"invalid key owner {name!r} <{email}>")
    home = home.absolute()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(home, 0o700)
    except OSError as exc:
        raise StartupError(f"cannot create GnuPG home {home}: "
                           f"{(exc.strerror or str(exc)).lower()}") from None
    try:
        existing = secret_key_fingerprints(home)
        if existing:
            raise StartupError(f"GnuPG home {home} already holds secret key {existing[0]}; "
                               "use it (signing.key_id) or choose another --gnupg-home")
        uid = f"{name} <{email}>"
        proc = _gpg(home, "--status-fd", "1", "--quick-gen-key", uid, algorithm, "sign", "never")
        status = proc.stdout.decode("utf-8", "replace")
        match = re.search(r"^\[GNUPG:\] KEY_CREATED \S+ ([0-9A-F]{40,64})", status, re.MULTILINE)
        if proc.returncode != 0 or match is None:
            raise StartupError(f"gpg could not create the key in {home}: "
                               f"{_gpg_complaint(proc.stderr)}")
        fingerprint = match.group(1)
        public = export_public_key(SigningKey(home, fingerprint))
    finally:
        stop_agent(home)
    out_dir = (export_dir or home).absolute()
    binary, armored = out_dir / BINARY_NAME, out_dir / ARMORED_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, data in ((binary, public.data), (armored, public.armored)):
            _write_atomic(path, data, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot write the public key into {out_dir}: "
                           f"{(exc.strerror or str(exc)).lower()}") from None
    return GeneratedKey(home, fingerprint, uid, binary, armored)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- serving


class KeyService:
    """The public key of the repositories this node serves, for `/keys/repository.gpg`."""

    def __init__(self, config: NodeConfig, signing_key: SigningKey | None) -> None:
        self.config = config
        self.signing_key = signing_key
        self._key: PublicKey | None = None
        self._checked_at = float("-inf")
        self._error: EdgedepotError | None = None
        self._lock = asyncio.Lock()
        self._client: HttpClient | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._disk = config.store_dir / KEY_DIR / BINARY_NAME

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the key served (None: no key, or a cache that has not fetched it)."""
        return self._key.fingerprint if self._key is not None else None

    @property
    def upstream_url(self) -> str | None:
        up = self.config.upstream if self.config.role == "cache" else None
        return f"{up}{KEY_DIR}/{BINARY_NAME}" if up else None

    async def start(self) -> None:
        if self.signing_key is not None:
            self._key = await asyncio.to_thread(export_public_key, self.signing_key)
            log.info("repository signing key %s", format_fingerprint(self._key.fingerprint))
            return
        if self.upstream_url is None:
            return
        self._key = self._load_disk()
        self._client = HttpClient("keys", client_settings(self.config))
        await self._client.__aenter__()
        self._warmup = asyncio.create_task(self._warm())

    def reconfigure(self, old: NodeConfig, new: NodeConfig) -> None:
        """A reload listener: new client settings for the next fetch, the new TTL, and a
        moved upstream asked at the next request (the key kept on disk is served meanwhile)."""
        self.config = new
        if self._client is not None:
            self._client.reconfigure(client_settings(new))
        if new.upstream != old.upstream:
            self._checked_at = float("-inf")

    async def _warm(self) -> None:
        try:
            await self.current()
        except UpstreamError as exc:
            log.info("repository key not fetched yet: %s", exc)

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmup
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    def _load_disk(self) -> PublicKey | None:
        try:
            return PublicKey.parse(self._disk.read_bytes())
        except (OSError, KeyFormatError):
            return None

    async def current(self) -> tuple[PublicKey | None, bool]:
        """(key, stale). A cache revalidates after the index TTL; when the upstream fails it
        serves the key it has (stale) or raises the UpstreamError, and retries soon."""
        url, client = self.upstream_url, self._client
        if url is None or client is None:
            return self._key, False
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.config.index_ttl:
                self._disk.parent.mkdir(parents=True, exist_ok=True)
                async with FileLock(self._disk.with_suffix(".lock")):
                    # Another worker process of this node may have asked just now.
                    if not self._adopt_recent_check():
                        await self._refresh(url, client)
            if self._key is None and self._error is not None:
                raise self._error
            return self._key, self._error is not None

    def _adopt_recent_check(self) -> bool:
        """Take the key another worker checked within the TTL (its stamp next to the key)."""
        try:
            stamp = json.loads(self._disk.with_suffix(".checked").read_text())
            checked, url = float(stamp["at"]), str(stamp["url"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if url != self.upstream_url:
            return False  # asked of another upstream (it moved since)
        age = time.time() - checked
        if age >= self.config.index_ttl:
            return False
        self._key, self._error = self._load_disk(), None
        self._checked_at = time.monotonic() - age
        return True

    async def _refresh(self, url: str, client: HttpClient) -> None:
        try:
            reply = await client.fetch_small(url, max_bytes=MAX_KEY_BYTES)
            key: PublicKey | None = PublicKey.parse(reply.body)
        except UpstreamNotFound:
            key = None
        except (KeyFormatError, UpstreamError, IntegrityError) as exc:
            self._error = exc if isinstance(exc, EdgedepotError) else \
                IntegrityError(f"upstream {url}: not a public key: {exc}")
            self._checked_at = time.monotonic() - self.config.index_ttl + RETRY_AFTER
            if self._key is not None:
                log.warning("serving the repository key kept on disk: %s", self._error)
            return
        if key != self._key:
            await asyncio.to_thread(self._persist, key)
            if key is not None:
                log.info("repository signing key from upstream: %s",
                         format_fingerprint(key.fingerprint))
        self._key, self._error, self._checked_at = key, None, time.monotonic()
        with contextlib.suppress(OSError):
            self._disk.with_suffix(".checked").write_text(
                json.dumps({"at": time.time(), "url": url}))

    def _persist(self, key: PublicKey | None) -> None:
        if key is None:
            self._disk.unlink(missing_ok=True)
            return
        self._disk.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._disk, key.data, 0o644)
