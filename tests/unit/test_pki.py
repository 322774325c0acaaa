"""The generated PKI must be what OpenVPN clients and the gateway's verifier expect."""

import base64
import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2sgw.openvpn.static_key import parse_static_key
from p2sgw.pki import Pki, PkiError, load_pem_certificate, root_info, thumbprint


def self_signed(cn: str, *, ca: bool) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki.create(tmp_path_factory.mktemp("state"), "vpn.example.com")


def test_ca_and_server_certificate(pki):
    ca = pki.ca_certificate()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3600)

    server = load_pem_certificate(pki.server_cert_path.read_text())
    server.verify_directly_issued_by(ca)
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vpn.example.com"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.com"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    parse_static_key(pki.tls_crypt_key_path.read_text())
    for key_path in (pki.ca_key_path, pki.server_key_path, pki.tls_crypt_key_path):
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_ip_public_address_gets_ip_san(tmp_path):
    pki = Pki.create(tmp_path, "192.0.2.10")
    server = load_pem_certificate(pki.server_cert_path.read_text())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]


def test_issue_client(pki):
    issued = pki.issue_client("carol@example.com", days=10)
    cert = load_pem_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(pki.ca_certificate())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "carol@example.com"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued.thumbprint == thumbprint(cert) == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert issued.serial == f"{cert.serial_number:X}"
    assert dt.timedelta(days=9) < issued.not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(days=10)
    assert stat.S_IMODE(pki.client_key_path("carol@example.com").stat().st_mode) == 0o600
    assert pki.load_client("carol@example.com") == issued


def test_duplicate_refused_unless_revoked(pki):
    first = pki.issue_client("dave")
    with pytest.raises(PkiError, match="already has a valid certificate"):
        pki.issue_client("dave")
    second = pki.issue_client("dave", revoked={first.thumbprint.lower()})
    assert second.thumbprint != first.thumbprint


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-rf", ".hidden", "x" * 65, "sp ace"])
def test_invalid_names_refused(pki, name):
    with pytest.raises(PkiError, match="invalid client name"):
        pki.issue_client(name)


def test_client_cannot_outlive_ca(pki):
    with pytest.raises(PkiError, match="outlive the CA"):
        pki.issue_client("eve", days=20 * 365)


def test_root_info_accepts_ca_in_any_encoding():
    pem = self_signed("Corp Root", ca=True)
    cert = load_pem_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert root_info(pem) == ("Corp Root", thumbprint(cert))
    assert load_pem_certificate(der) == cert
    assert load_pem_certificate(base64.b64encode(der).decode()) == cert


def test_root_info_refuses_leaf_and_garbage():
    with pytest.raises(PkiError, match="not a CA certificate"):
        root_info(self_signed("leaf", ca=False))
    with pytest.raises(PkiError, match="not a valid X.509 certificate"):
        load_pem_certificate("hello")
