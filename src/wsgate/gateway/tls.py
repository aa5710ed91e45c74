"""TLS for the gateway: verifying upstreams, and terminating clients' TLS with a reloadable certificate."""

from __future__ import annotations

import logging
import ssl

from wsgate.config import ServerTls, UpstreamTls

log = logging.getLogger("wsgate.gateway")


def upstream_ssl_context(tls: UpstreamTls, *, route: str) -> ssl.SSLContext:
    """A client context for ``wss://`` and ``https://`` upstreams: verified against the system roots or the
    configured CA, host name checked (SNI is the upstream's host). Turning verification off takes an explicit
    ``verify = false`` and is logged, loudly, once."""
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "route %s: upstream TLS verification is OFF (tls.verify = false): anyone on the path can "
            "impersonate the upstream and read the injected credential",
            route,
        )
    return context


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """A server context with the configured certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificate(context, tls)
    return context


def load_certificate(context: ssl.SSLContext, tls: ServerTls) -> None:
    """(Re)load the certificate into a live context: new handshakes use it, open connections are untouched."""
    context.load_cert_chain(str(tls.cert), str(tls.key))
