"""A private apt root for one site: real apt-get with an empty dpkg status and private
lists, cache and configuration, so many sites can run side by side without touching the host."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AptRoot:
    """A private apt root: empty dpkg status, private lists/cache/etc."""

    root: Path
    keyring: Path | None
    ca_file: Path | None = None  # a private CA apt trusts for https sources (a cache's CA)

    def __post_init__(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "etc/apt.conf.d",
                    "etc/preferences.d", "etc/trusted.gpg.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()

    def set_source(self, base_url: str, suite: str = "stable", component: str = "main") -> None:
        signed = f"[signed-by={self.keyring}] " if self.keyring else "[trusted=yes] "
        (self.root / "etc/sources.list").write_text(f"deb {signed}{base_url} {suite} {component}\n")

    def options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::State::status={r}/status", "-o", f"Dir::State::Lists={r}/lists",
                "-o", f"Dir::Cache={r}/cache", "-o", f"Dir::Etc={r}/etc",
                "-o", f"Dir::Etc::SourceList={r}/etc/sources.list",
                "-o", "Dir::Etc::SourceParts=/dev/null", "-o", "APT::Architecture=amd64",
                "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
                "-o", "Acquire::Retries=0", "-o", "Acquire::http::Proxy=false",
                "-o", "Acquire::https::Proxy=false",
                *(["-o", f"Acquire::https::CAInfo={self.ca_file}"] if self.ca_file else [])]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["apt-get", *self.options(), *args], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["apt-get", *self.options(), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def archives(self) -> list[Path]:
        return sorted((self.root / "cache/archives").glob("*.deb"))
