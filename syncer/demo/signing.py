"""Throwaway signing keys for sample archives (demo, tests, benchmarks); never for production."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from distro.debian_repo import RepoToolError, SigningKey, run_gpg

MAX_GNUPG_HOME = 80  # agent socket paths must fit in sun_path (108 bytes)


def make_throwaway_key(gnupg_home: Path, name: str = "edgedepot test") -> SigningKey:
    """Create a passphrase-less ed25519 signing key in a fresh GnuPG home.

    If gnupg_home is too long for gpg-agent's socket, the home is made under /tmp instead
    (gnupg_home becomes a symlink to it when it does not exist yet); the returned key names
    the real home. Call stop_gpg_agent() when done.
    """
    home = gnupg_home.absolute()
    if len(str(home)) > MAX_GNUPG_HOME:
        short = Path(tempfile.mkdtemp(prefix="edgegpg-", dir="/tmp"))
        if home.is_symlink():
            home.unlink()  # left over from an earlier key
        if not home.exists():
            home.parent.mkdir(parents=True, exist_ok=True)
            home.symlink_to(short, target_is_directory=True)
        home = short
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    probe = SigningKey(home, "")
    uid = f"{name} <archive@edgedepot.invalid>"
    status = run_gpg(probe, "--status-fd", "1", "--quick-gen-key", uid, "ed25519", "sign",
                     "never").decode("utf-8", "replace")
    match = re.search(r"^\[GNUPG:\] KEY_CREATED \S+ ([0-9A-F]{40,64})", status, re.MULTILINE)
    if match is None:
        raise RepoToolError(["gpg", "--quick-gen-key"], 0, f"no KEY_CREATED status: {status}")
    return SigningKey(home, match.group(1))
