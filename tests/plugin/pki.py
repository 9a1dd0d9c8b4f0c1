"""Certificates and keys made by the tests themselves (cryptography, no openssl CLI).

`write_cert_and_key` makes a lone self-signed certificate (configuration tests);
`CertificateAuthority` is a private CA that issues server certificates (for 127.0.0.1 and
localhost) and client certificates (mTLS), so tests run real TLS between real clients and
nodes with a trust chain like a fleet's.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, name: str, cert: Any, key: Any,
           passphrase: bytes | None = None) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, enc))
    key_path.chmod(0o600)
    return cert_path, key_path


def write_cert_and_key(directory: Path, name: str, *, days: int = 30,
                       passphrase: bytes | None = None) -> tuple[Path, Path]:
    """A self-signed certificate valid for `days` more days and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=10)).not_valid_after(now + timedelta(days))
            .sign(key, hashes.SHA256()))
    return _write(directory, name, cert, key, passphrase)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files (key without passphrase)."""

    cert: Path
    key: Path

    def der(self) -> bytes:
        """The certificate in DER, as `SSLSocket.getpeercert(binary_form=True)` gives it."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        return x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER)


class CertificateAuthority:
    """A private CA (like a fleet's): issues server and client certificates signed by it."""

    def __init__(self, directory: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        self.directory = directory
        self.name = name
        self._key = _new_key()
        self._subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        public = self._key.public_key()
        ca = (x509.CertificateBuilder().subject_name(self._subject).issuer_name(self._subject)
              .public_key(public).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(days=1))
              .not_valid_after(now + timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=True, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=True,
                  crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
              .sign(self._key, hashes.SHA256()))
        self._ca_cert = ca
        self.cert, _ = _write(directory, f"{name}-ca", ca, self._key)

    def _issue(self, name: str, server: bool, hosts: tuple[str, ...]) -> Issued:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False))
        if server:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = _write(self.directory, name, cert, key)
        return Issued(cert_path, key_path)

    def issue_server(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
                     ) -> Issued:
        """A server certificate for `hosts` (IP addresses and DNS names)."""
        return self._issue(name, True, hosts)

    def issue_client(self, name: str) -> Issued:
        """A client certificate (TLS client authentication) named `name`."""
        return self._issue(name, False, ())


@dataclass(frozen=True)
class FleetPki:
    """A fleet's certificates: its CA, the origin's and a cache's server certificates, the
    cache's client certificate; and a stranger's CA with a client certificate of its own."""

    ca: CertificateAuthority
    origin: Issued
    cache: Issued
    cache_client: Issued
    other_ca: CertificateAuthority
    stranger_client: Issued

    @classmethod
    def create(cls, directory: Path) -> FleetPki:
        ca = CertificateAuthority(directory / "fleet", "fleet")
        other = CertificateAuthority(directory / "other", "other")
        return cls(ca, ca.issue_server("origin"), ca.issue_server("cache"),
                   ca.issue_client("cache-client"), other, other.issue_client("stranger"))

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """What a client that trusts the fleet CA uses (optionally presenting `client`)."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def upstream_flags(self, client: Issued | None = None) -> list[str]:
        """A cache's flags to trust the fleet CA and present `client` (default: its own)."""
        client = client or self.cache_client
        return ["--upstream-ca", str(self.ca.cert), "--upstream-client-cert", str(client.cert),
                "--upstream-client-key", str(client.key)]

    def server_flags(self, server: Issued, client_ca: bool = False) -> list[str]:
        """A node's HTTPS listener with `server`'s certificate; `client_ca`: mTLS."""
        flags = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
        return flags + (["--tls-client-ca", str(self.ca.cert)] if client_ca else [])
