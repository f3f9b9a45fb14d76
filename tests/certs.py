"""
Throwaway PKI for tests: a CA, a server certificate and a client certificate.

Everything is generated with C{cryptography} (ECDSA P-256 keys, which are
fast to make and understood by Go, OpenSSL and Python's C{ssl}), written as
PEM files into a directory, and described by a L{TestPKI} of paths.  Nothing
here is suitable for anything but tests on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_SERVER_HOSTS", "TestPKI", "write_test_pki"]

DEFAULT_SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)


@frozen
class TestPKI:
    """
    Paths of the PEM files making up a throwaway PKI.

    @ivar directory: the directory that holds every file.
    @ivar ca_cert: the CA certificate (the trust root for both sides).
    @ivar ca_key: the CA's private key.
    @ivar server_cert: server certificate, valid for C{hosts}.
    @ivar server_key: the server's private key.
    @ivar client_cert: client certificate (CN C{client_name}, O
        C{system:masters}) signed by the CA, or C{None} if not requested.
    @ivar client_key: the client's private key, or C{None}.
    @ivar client_name: the common name of the client certificate.
    """

    __test__ = False  # not a pytest test class, despite its name

    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str | None
    client_key: str | None
    client_name: str | None


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    hosts: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            False,
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(path: str, data: bytes, private: bool = False) -> str:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_test_pki(
    directory: str,
    *,
    hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
    client_name: str | None = "brigade-cr-test-client",
    now: datetime.datetime | None = None,
) -> TestPKI:
    """
    Generate a CA, a server certificate for C{hosts} and (unless
    C{client_name} is C{None}) a client certificate, all signed by the CA,
    and write them as PEM files into C{directory} (created if missing).

    Files: C{ca.crt}, C{ca.key}, C{server.crt}, C{server.key},
    C{client.crt}, C{client.key}; keys are written mode 0600.  Existing
    files are overwritten.

    @param hosts: IP addresses and DNS names for the server certificate's
        subjectAltName (IP literals become IP SANs).
    @param now: the certificates' reference time (validity starts an hour
        earlier and lasts two days); defaults to the current UTC time.
    @return: the paths written.
    """
    os.makedirs(directory, exist_ok=True)
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _new_key()
    ca_name = _name("brigade-cr-test-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(
        ca_key,
        ca_cert,
        _name(hosts[0] if hosts else "server"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        hosts,
    )

    def path(name: str) -> str:
        return os.path.join(os.path.abspath(directory), name)

    client_cert_path = client_key_path = None
    if client_name is not None:
        client_key, client_cert = _leaf(
            ca_key,
            ca_cert,
            _name(client_name, "system:masters"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            now,
        )
        client_cert_path = _write(path("client.crt"), _cert_pem(client_cert))
        client_key_path = _write(path("client.key"), _key_pem(client_key), private=True)
    return TestPKI(
        directory=os.path.abspath(directory),
        ca_cert=_write(path("ca.crt"), _cert_pem(ca_cert)),
        ca_key=_write(path("ca.key"), _key_pem(ca_key), private=True),
        server_cert=_write(path("server.crt"), _cert_pem(server_cert)),
        server_key=_write(path("server.key"), _key_pem(server_key), private=True),
        client_cert=client_cert_path,
        client_key=client_key_path,
        client_name=client_name,
    )
