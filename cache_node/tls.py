"""The HTTPS listener's TLS: a server context built from `tls.*`, replaceable on reload.

The listening socket keeps the one `ssl.SSLContext` it was started with; a reload cannot hand
the server another. So that context only chooses: its SNI callback (OpenSSL calls it for every
ClientHello, with or without a server name) moves each new handshake onto the current
context, built from the files as they are now: a renewed certificate, or another client CA,
takes effect for new connections while connections already open keep their session.

With `tls.client_ca` set, clients must present a certificate that CA signed
(`ssl.CERT_REQUIRED`): an origin that serves only enrolled caches.
"""

from __future__ import annotations

import logging
import ssl

from cache_node.config import TlsServerSettings

log = logging.getLogger(__name__)


def server_context(settings: TlsServerSettings) -> ssl.SSLContext:
    """A server context from the certificate, key and optional client CA files; raises
    OSError or ssl.SSLError when they cannot be loaded."""
    if settings.cert is None or settings.key is None:
        raise ValueError("a TLS listener needs tls.cert and tls.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.cert), str(settings.key))
    if settings.client_ca is not None:
        context.load_verify_locations(cafile=str(settings.client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class ServerTls:
    """The listener's context (`context`) and the one new handshakes use (`current`)."""

    def __init__(self, settings: TlsServerSettings) -> None:
        self.context = server_context(settings)
        self.current = self.context
        self.settings = settings
        self.context.sni_callback = self._choose

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if self.current is not self.context:
            ssl_object.context = self.current

    def reload(self, settings: TlsServerSettings) -> None:
        """Read the files again (same paths or new ones) for the handshakes that follow.
        Raises (and changes nothing) when they cannot be loaded."""
        fresh = server_context(settings)
        # Whether a client certificate is asked for is decided when the connection is made,
        # from the listener's context, before the SNI callback switches contexts.
        self.context.verify_mode = fresh.verify_mode
        self.current, self.settings = fresh, settings
