"""The gateway's own PKI: a CA, the server certificate clients validate, the tls-crypt key and client certificates.

Everything lives in `state_dir/pki` as PEM files so operators can inspect them with openssl. Keys are EC P-256:
small, fast to sign with, and accepted by every OpenVPN 2.4+ client. Thumbprints are SHA-1 of the DER encoding,
upper-case hex, the form operators paste into a cloud gateway's revoked-certificate list.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2sgw.openvpn.static_key import format_static_key, generate_static_key

CA_LIFETIME = dt.timedelta(days=3650)
# Browsers and Apple clients reject server certificates valid for longer than 825 days.
SERVER_LIFETIME = dt.timedelta(days=825)
# Tolerates clients whose clocks run a little behind the gateway's.
CLOCK_SKEW = dt.timedelta(minutes=5)
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


class PkiError(ValueError):
    """A PKI operation was refused; the message is meant for the operator."""


@dataclass(frozen=True, slots=True)
class IssuedCert:
    name: str
    cert_pem: str
    key_pem: str
    serial: str  # upper-case hex, as openssl prints it
    thumbprint: str
    not_after: dt.datetime  # UTC


def thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()


def load_pem_certificate(text: str | bytes) -> x509.Certificate:
    """Parse a certificate given as PEM, DER, or the bare base64 body cloud portals ask for."""
    data = text.encode() if isinstance(text, str) else text
    try:
        if _PEM_CERT_BEGIN in data:
            return x509.load_pem_x509_certificate(data[data.index(_PEM_CERT_BEGIN) :])
        try:
            der = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error:
            der = data
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise PkiError("not a valid X.509 certificate (PEM or DER expected)") from None


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def root_info(pem: str | bytes) -> tuple[str | None, str]:
    """(subject CN, thumbprint) of a certificate that may act as a trusted root; refuses leaf certificates."""
    cert = load_pem_certificate(pem)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError("not a CA certificate (BasicConstraints CA:TRUE missing)")
    return common_name(cert), thumbprint(cert)


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def validate_client_name(name: str) -> str:
    if not CLIENT_NAME.fullmatch(name):
        raise PkiError(
            f"invalid client name {name!r}: 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
        )
    return name


class Pki:
    """File layout of `state_dir/pki` plus the operations that create and use it."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "pki"

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.dir / "server.key"

    @property
    def tls_crypt_key_path(self) -> Path:
        return self.dir / "tls-crypt.key"

    @property
    def clients_dir(self) -> Path:
        return self.dir / "clients"

    def client_cert_path(self, name: str) -> Path:
        return self.clients_dir / f"{validate_client_name(name)}.crt"

    def client_key_path(self, name: str) -> Path:
        return self.clients_dir / f"{validate_client_name(name)}.key"

    def exists(self) -> bool:
        return self.ca_key_path.exists() and self.ca_cert_path.exists()

    @classmethod
    def create(cls, state_dir: Path, public_address: str) -> Pki:
        """Generate a fresh CA, server certificate and tls-crypt key, replacing any previous PKI.

        Client certificates of a previous CA are deleted: they can no longer be verified.
        """
        pki = cls(state_dir)
        pki.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if pki.clients_dir.exists():
            shutil.rmtree(pki.clients_dir)
        pki.clients_dir.mkdir(mode=0o700)

        now = _now()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"p2sgw CA {public_address}"[:64])])
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key(), now, now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            pki._leaf_builder(ca_cert, ca_key, public_address[:64], server_key, now, now + SERVER_LIFETIME)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_general_name(public_address)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        _write_private(pki.ca_key_path, _key_pem(ca_key))
        pki.ca_cert_path.write_text(certificate_pem(ca_cert))
        _write_private(pki.server_key_path, _key_pem(server_key))
        pki.server_cert_path.write_text(certificate_pem(server_cert))
        _write_private(pki.tls_crypt_key_path, format_static_key(generate_static_key()))
        return pki

    def ca_certificate(self) -> x509.Certificate:
        return load_pem_certificate(self.ca_cert_path.read_bytes())

    def ca_pem(self) -> str:
        return self.ca_cert_path.read_text()

    def tls_crypt_key_text(self) -> str:
        return self.tls_crypt_key_path.read_text()

    def issue_client(self, name: str, days: int = 365, revoked: Collection[str] = ()) -> IssuedCert:
        """Sign a client certificate (CN=name, EKU clientAuth) and store it under `clients/`.

        A name may be reissued only once its current certificate's thumbprint is in `revoked`, so a valid
        certificate is never silently replaced.
        """
        validate_client_name(name)
        if days < 1:
            raise PkiError("validity must be at least 1 day")
        if not self.exists():
            raise PkiError(f"no CA in {self.dir}: run 'p2sgw init' first")
        cert_path, key_path = self.client_cert_path(name), self.client_key_path(name)
        if cert_path.exists():
            current = thumbprint(load_pem_certificate(cert_path.read_bytes()))
            if current.upper() not in {t.upper() for t in revoked}:
                raise PkiError(f"client {name!r} already has a valid certificate ({current}); revoke it first")

        ca_cert = self.ca_certificate()
        now = _now()
        not_after = now + dt.timedelta(days=min(days, 100 * 365))  # capped: no datetime overflow for huge values
        if not_after > ca_cert.not_valid_after_utc:
            raise PkiError(f"{days} days would outlive the CA, which expires {ca_cert.not_valid_after_utc:%Y-%m-%d}")
        ca_key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf_builder(ca_cert, ca_key, name, key, now, not_after)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.clients_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(key_path, _key_pem(key))
        cert_path.write_text(certificate_pem(cert))
        return self.load_client(name)

    def load_client(self, name: str) -> IssuedCert:
        """An issued client read back from its files, for building its profile."""
        cert_path, key_path = self.client_cert_path(name), self.client_key_path(name)
        if not cert_path.exists() or not key_path.exists():
            raise PkiError(f"no client named {name!r} (expected {cert_path} and {key_path})")
        cert_pem = cert_path.read_text()
        cert = load_pem_certificate(cert_pem)
        return IssuedCert(
            name=name,
            cert_pem=cert_pem,
            key_pem=key_path.read_text(),
            serial=f"{cert.serial_number:X}",
            thumbprint=thumbprint(cert),
            not_after=cert.not_valid_after_utc,
        )

    @staticmethod
    def _leaf_builder(ca_cert, ca_key, cn: str, key, not_before, not_after) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (
            _builder(subject, ca_cert.subject, key.public_key(), not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _builder(subject, issuer, public_key, not_before, not_after) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(not_after)
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _write_private(path: Path, text: str) -> None:
    """Create the file 0600 from the start: a key must never be readable, even briefly."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
