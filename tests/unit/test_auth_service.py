"""The gateway's authentication policy: certificate/RADIUS combinations, tokens, challenges."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2sgw.auth.base import AuthResult, Challenge, Credentials
from p2sgw.auth.certificate import CertificateAuthenticator
from p2sgw.auth.service import AuthService
from p2sgw.auth.tokens import AuthTokens
from p2sgw.config import GatewayConfig


def _cert(cn: str, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,), days: int = 30) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(key, hashes.SHA256())


class FakeRadius:
    """Stands in for RadiusAuthenticator at unit level (the real one is tested against FreeRADIUS)."""

    max_wait = 30.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes | None]] = []

    async def authenticate_password(self, creds, password, state):
        self.calls.append((creds.username, password, state))
        if creds.username == "otp" and state is None:
            return AuthResult(False, "otp", "radius", "challenge", challenge=Challenge("code?", False, b"S1"))
        if (creds.username, password, state) in {("alice", "pw", None), ("otp", "123456", b"S1")}:
            return AuthResult(True, creds.username, "radius", group_hints=["eng"])
        return AuthResult.refuse("radius", "wrong username or password", creds.username)


def service(types, combination="any"):
    config = GatewayConfig(public_address="vpn", vpn_client_address_pool=["10.9.0.0/24"], vpn_auth_types=types,
                           auth_combination=combination)
    radius = FakeRadius()
    return AuthService(config, CertificateAuthenticator(set()), radius=radius,
                       tokens=AuthTokens(b"k" * 32, 3600)), radius


def run(coro):
    return asyncio.run(coro)


def test_certificate_only():
    svc, _ = service(["certificate"])
    ok = run(svc.authenticate(Credentials("openvpn-udp", "1.2.3.4:5", peer_chain=[_cert("bob")])))
    assert ok.ok and ok.identity == "bob" and ok.method == "certificate"
    no_eku = run(svc.authenticate(Credentials("openvpn-udp", "1.2.3.4:5", peer_chain=[_cert("bob", eku=())])))
    assert not no_eku.ok and "extended key usage" in no_eku.reason
    assert svc.requires_client_certificate()


@pytest.mark.parametrize("combination", ["any", "all"])
def test_certificate_and_radius(combination):
    svc, radius = service(["certificate", "radius"], combination)
    cert_only = run(svc.authenticate(Credentials("openvpn-udp", "r", peer_chain=[_cert("bob")])))
    password_only = run(svc.authenticate(Credentials("openvpn-udp", "r", username="alice", password="pw")))
    both = run(svc.authenticate(Credentials("openvpn-udp", "r", peer_chain=[_cert("alice")], username="alice",
                                            password="pw")))
    if combination == "any":
        assert cert_only.ok and password_only.ok and both.ok
        assert not svc.requires_client_certificate()
    else:
        assert not cert_only.ok and not password_only.ok
        assert both.ok and both.method == "certificate+radius"
        assert svc.requires_client_certificate()


def test_token_replaces_password_for_renegotiation():
    svc, radius = service(["radius"])
    first = run(svc.authenticate(Credentials("openvpn-udp", "r", username="alice", password="pw")))
    token, token_id = svc.issue_token(first, now=__import__("time").time())
    radius.calls.clear()
    again = run(svc.authenticate(Credentials("openvpn-udp", "r", username="alice", password=token)))
    assert again.ok and again.group_hints == ["eng"] and radius.calls == []  # RADIUS not asked again
    assert svc.may_wait(Credentials("openvpn-udp", "r", username="alice", password=token)) == 0
    stolen = run(svc.authenticate(Credentials("openvpn-udp", "r", username="mallory", password=token)))
    assert not stolen.ok
    svc.revoke_token(token_id)  # e.g. Session-Timeout: the next connect must sign in for real
    assert not run(svc.authenticate(Credentials("openvpn-udp", "r", username="alice", password=token))).ok


def test_crv1_answer_by_reconnecting():
    svc, radius = service(["radius"])
    first = run(svc.authenticate(Credentials("openvpn-udp", "r", username="otp", password="otp-pw")))
    assert first.challenge is not None and first.challenge.text == "code?"
    state_id = svc.remember_challenge("otp", first.challenge, now=__import__("time").time())
    answer = run(svc.authenticate(Credentials("openvpn-udp", "r", username="otp",
                                              password=f"CRV1::{state_id}::123456")))
    assert answer.ok and radius.calls[-1] == ("otp", "123456", b"S1")
    replay = run(svc.authenticate(Credentials("openvpn-udp", "r", username="otp",
                                              password=f"CRV1::{state_id}::123456")))
    assert not replay.ok and "challenge" in replay.reason


def test_token_format_and_lifetime():
    tokens = AuthTokens(b"\0" * 32, lifetime=100)
    token = tokens.issue("user", now=1000)
    assert token.startswith("SESS_ID_AT_") and len(token) == len("SESS_ID_AT_") + 80
    assert tokens.verify("user", token, 1050) is not None
    assert tokens.verify("user", token, 1101) is None  # beyond the lifetime of the real sign-in
    assert tokens.verify("user", token[:-2] + "AA", 1050) is None
    assert tokens.verify("user", "SESS_ID_AT_!!!", 1050) is None


@pytest.mark.parametrize("combination", ["any", "all"])
def test_at_once_answers_whatever_needs_no_radius_round_trip(combination):
    """Front-ends decide synchronously when authenticate_at_once answers; it must agree with
    authenticate() and leave exactly the RADIUS password checks to it."""
    svc, radius = service(["certificate", "radius"], combination)
    cases = [
        Credentials("openvpn-udp", "r", peer_chain=[_cert("bob")]),
        Credentials("openvpn-udp", "r", peer_chain=[_cert("bob", eku=())], username="alice", password="pw"),
        Credentials("openvpn-udp", "r", username="alice", password="pw"),
        Credentials("openvpn-udp", "r", peer_chain=[_cert("alice")], username="alice", password="pw"),
        Credentials("openvpn-udp", "r"),
    ]
    for creds in cases:
        radius.calls.clear()
        now = svc.authenticate_at_once(creds)
        assert radius.calls == []
        full = run(svc.authenticate(creds))
        if now is None:
            assert radius.calls, creds  # only a real RADIUS question is left to the task
        else:
            assert (now.ok, now.method, now.reason) == (full.ok, full.method, full.reason) and radius.calls == []
    token, _ = svc.issue_token(run(svc.authenticate(cases[3])), now=__import__("time").time())
    by_token = svc.authenticate_at_once(Credentials("openvpn-udp", "r", peer_chain=[_cert("alice")],
                                                    username="alice", password=token))
    assert by_token is not None and by_token.ok
    assert by_token.method == ("certificate+radius" if combination == "all" else "certificate")
