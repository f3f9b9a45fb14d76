"""
TLS for the connection to the Kubernetes API server.

``tls_policy(config)`` gives the ``IPolicyForHTTPS`` an ``Agent`` needs:

- the server certificate is checked against ``certificate-authority`` (every
  certificate in the bundle is trusted, so a CA rotation with two CAs in
  one file works), or against the platform's roots when there is none;
- the name checked is ``tls-server-name`` when set, else the server URL's
  host. An IP-address host (``https://127.0.0.1:6443``, ``https://[::1]``)
  is checked against the certificate's IP subjectAltNames (Twisted hands IP
  literals to service_identity as ``IPAddress_ID``) and is not sent as SNI;
  a DNS name is checked as a DNS-ID and sent as SNI;
- a client certificate (with any intermediates that follow it in the PEM)
  and its key are presented when configured;
- ``insecure-skip-tls-verify`` gives a policy that checks nothing (a warning
  is logged when it is built), still presenting the client certificate and
  sending SNI.

The policy builds one connection creator up front and hands it out for
every connection: the server is always the same, and redirects are not
followed, so the host the ``Agent`` asks about is the configured one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from brigade_cr.stores.kube.config import KubeConfig, KubeConfigError


def _pem_certificates(data: bytes, what: str) -> list[Certificate]:
    try:
        parsed = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KubeConfigError(f"{what} is not a PEM certificate") from None
    return [Certificate.loadPEM(cert.public_bytes(Encoding.PEM)) for cert in parsed]


def _client_certificate(config: KubeConfig) -> tuple[PrivateCertificate | None, list[Any]]:
    """The client certificate with its key, and the chain that follows it."""
    if config.client_cert_pem is None or config.client_key_pem is None:
        return None, []
    chain = _pem_certificates(config.client_cert_pem, f"{config.source}: client certificate")
    try:
        key = KeyPair.load(config.client_key_pem, crypto.FILETYPE_PEM)
    except Exception:
        raise KubeConfigError(f"{config.source}: client key is not a PEM private key") from None
    try:
        leaf = PrivateCertificate.fromCertificateAndKeyPair(  # type: ignore[no-untyped-call]
            chain[0], key
        )
    except Exception:
        raise KubeConfigError(f"{config.source}: client key does not match the client certificate") from None
    return leaf, [cert.original for cert in chain[1:]]


@implementer(IOpenSSLClientConnectionCreator)
@attrs.define
class _UnverifiedCreator:
    """Connections that check no certificate (``insecure-skip-tls-verify``)."""

    options: CertificateOptions
    server_name: bytes | None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        return connection


@implementer(IPolicyForHTTPS)
@attrs.define
class KubeTLSPolicy:
    """
    Hands out one prepared connection creator for the API server, whatever
    host the ``Agent`` names (it only ever connects to that server).
    """

    creator: Any  # IOpenSSLClientConnectionCreator

    log: ClassVar[Logger] = Logger()

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The creator prepared from the ``KubeConfig``."""
        return self.creator


def tls_policy(config: KubeConfig) -> KubeTLSPolicy:
    """
    The TLS policy ``config`` describes (see the module docstring).

    Raises ``KubeConfigError`` when the CA, the client certificate or the
    client key is not PEM, or the key does not match the certificate.
    Nothing here touches the network.
    """
    client, chain = _client_certificate(config)
    name = config.verify_name
    if config.insecure_skip_tls_verify:
        KubeTLSPolicy.log.warn(
            "TLS verification of the Kubernetes API server {server} is disabled (insecure-skip-tls-verify)",
            server=config.server,
            source=config.source,
        )
        extra: dict[str, Any] = {"verify": False}
        if client is not None:
            extra.update(
                privateKey=client.privateKey.original,
                certificate=client.original,
                extraCertChain=chain,
            )
        is_dns = not (isIPAddress(name) or isIPv6Address(name))
        return KubeTLSPolicy(
            _UnverifiedCreator(
                CertificateOptions(**extra),
                name.encode("idna") if is_dns and name else None,
            )
        )
    trust_root: Any = None
    if config.ca_pem is not None:
        trust_root = trustRootFromCertificates(  # type: ignore[no-untyped-call]
            _pem_certificates(config.ca_pem, f"{config.source}: certificate-authority")
        )
    extra_options: dict[str, Any] = {}
    if chain:
        extra_options["extraCertChain"] = chain
    return KubeTLSPolicy(
        optionsForClientTLS(
            name,
            trustRoot=trust_root,
            clientCertificate=client,
            extraCertificateOptions=extra_options,
        )
    )
