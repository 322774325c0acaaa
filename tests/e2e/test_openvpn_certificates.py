"""Client certificates from a real openvpn 2.6 client: an operator-added root CA is trusted (and only while it
is), and bad certificates are refused with a log line while other sessions carry on."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography.hazmat.primitives import hashes

from .gateway_fixture import (
    BackgroundPing,
    ExtendedKeyUsageOID,
    cert_pem,
    gateway_ca,
    init_gateway,
    make_ca,
    make_client_cert,
    profile_with_credentials,
    single_transport_profile,
    wait_gateway_log,
    wait_sessions,
)
from .lab import wait_until


def _refused_by_tls(gw, client, since: int) -> str:
    """The gateway logs the failed TLS handshake; the client never completes its initialisation."""
    line = wait_gateway_log(gw, r"openvpn\.handshake_failed", since=since, timeout=30)
    assert "Initialization Sequence Completed" not in client.log_text()
    assert "session.up" not in gw.log_text()[since:]
    return line


def test_external_root_ca(make_lab, tmp_path):
    lab = make_lab(1)
    gw = init_gateway(lab)
    template = single_transport_profile(gw.issue("alice"), "udp")
    ca_cert, ca_key = make_ca("Contoso Client Root")
    ca_file = tmp_path / "contoso-root.pem"
    ca_file.write_text(cert_pem(ca_cert))
    carol_cert, carol_key = make_client_cert(ca_cert, ca_key, "carol")
    carol = profile_with_credentials(template, carol_cert, carol_key, lab.workdir / "carol.ovpn")
    gw.start()

    # Not trusted yet: the TLS handshake fails.
    offset = len(gw.log_text())
    before = lab.start_openvpn_client("c0", carol, name="carol-untrusted")
    _refused_by_tls(gw, before, offset)
    before.stop()
    assert gw.sessions() == []

    # Trust it (the running gateway picks it up), and carol gets in.
    added = gw.cli("ca", "add", str(ca_file))
    assert "Contoso Client Root" in added.stdout
    listing = gw.cli("ca", "list").stdout
    root_thumbprint = ca_cert.fingerprint(hashes.SHA1()).hex().upper()
    assert "Contoso Client Root" in listing and root_thumbprint in listing
    assert "built-in" in listing and "added" in listing
    wait_gateway_log(gw, r"config\.reloaded .*roots=1", since=offset, timeout=10)

    trusted = lab.start_openvpn_client("c0", carol, name="carol-trusted")
    vip = trusted.wait_connected(timeout=30)
    assert lab.ping("c0", lab.vnet_ip)
    assert lab.tcp_transfer("c0", lab.vnet_ip, 1 << 20)
    [session] = gw.sessions()
    assert (session["identity"], session["virtual_ip"], session["auth_method"]) == ("carol", vip, "certificate")
    trusted.stop()
    wait_sessions(gw, lambda s: s == [], what="carol's session to end")

    # Stop trusting it: refused again.
    offset = len(gw.log_text())
    gw.cli("ca", "remove", "Contoso Client Root")
    assert "Contoso Client Root" not in gw.cli("ca", "list").stdout
    wait_gateway_log(gw, r"config\.reloaded .*roots=0", since=offset, timeout=10)
    after = lab.start_openvpn_client("c0", carol, name="carol-removed")
    _refused_by_tls(gw, after, offset)
    after.stop()
    assert gw.sessions() == []


def _expired(state_dir):
    ca_cert, ca_key = gateway_ca(state_dir)
    now = dt.datetime.now(dt.UTC)
    return make_client_cert(ca_cert, ca_key, "mallory", not_before=now - dt.timedelta(days=30),
                            not_after=now - dt.timedelta(days=1))


def _server_auth_only(state_dir):
    ca_cert, ca_key = gateway_ca(state_dir)
    return make_client_cert(ca_cert, ca_key, "mallory", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))


def _no_eku(state_dir):
    ca_cert, ca_key = gateway_ca(state_dir)
    return make_client_cert(ca_cert, ca_key, "mallory", eku=None)


def _unknown_ca(state_dir):
    ca_cert, ca_key = make_ca("Nobody Trusts Me")
    return make_client_cert(ca_cert, ca_key, "mallory")


# (make the bad certificate, regex the gateway's refusal line must match)
REFUSALS = {
    "expired": (_expired, r"(openvpn\.handshake_failed|auth\.refused) .*reason=.*expired"),
    "eku-serverauth-only": (
        _server_auth_only,
        r"(openvpn\.handshake_failed|auth\.refused) .*reason=.*(unsuitable certificate purpose|unsupported certificate purpose|clientAuth)",
    ),
    "no-eku": (_no_eku, r"auth\.refused .*identity=mallory .*reason=.*(extended key usage|clientAuth)"),
    "unknown-ca": (_unknown_ca, r"openvpn\.handshake_failed .*reason=.*(local issuer|unknown ca|self.signed)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_client_certificate_is_refused(make_lab, case):
    make_cert, refusal = REFUSALS[case]
    lab = make_lab(2)
    gw = init_gateway(lab)
    bob_profile = single_transport_profile(gw.issue("bob"), "udp")
    cert, key = make_cert(gw.state_dir)
    bad = profile_with_credentials(bob_profile, cert, key, lab.workdir / f"mallory-{case}.ovpn")
    gw.start()

    bob = lab.start_openvpn_client("c1", bob_profile, name="bob")
    bob_vip = bob.wait_connected(timeout=30)
    [bob_session] = gw.sessions()
    bob_ping = BackgroundPing(lab, "c1", lab.vnet_ip, count=25)

    offset = len(gw.log_text())
    mallory = lab.start_openvpn_client("c0", bad, name=f"mallory-{case}")
    line = wait_gateway_log(gw, refusal, since=offset, timeout=30)
    assert f"remote={lab.client_ip(0)}:" in line, line
    time.sleep(1)  # let a wrongly accepted client get as far as it would
    assert "session.up" not in gw.log_text()[offset:]
    assert "Initialization Sequence Completed" not in mallory.log_text()
    if line.split()[2] == "auth.refused":
        # Refused after TLS: the client is told why and gives up.
        wait_until(lambda: "AUTH_FAILED" in mallory.log_text(), 15, what="AUTH_FAILED in mallory's log")
        wait_until(lambda: not mallory.running, 15, what="mallory's client to exit")
    mallory.stop()

    sent, received = bob_ping.result(timeout=30)
    assert received >= sent - 1, f"bob lost pings while mallory was refused: {received}/{sent}"
    assert bob.running
    [after] = gw.sessions()
    assert (after["id"], after["identity"], after["virtual_ip"]) == (bob_session["id"], "bob", bob_vip)
    assert lab.ping("c1", lab.vnet_ip)


def test_ca_remove_ends_sessions_chained_to_that_root(make_lab, tmp_path):
    reneg_sec = 10
    lab = make_lab(2)
    gw = init_gateway(lab)
    gw.edit_config(openvpn__reneg_sec=reneg_sec)  # at the latest, the next TLS handshake must see the change
    alice_profile = single_transport_profile(gw.issue("alice"), "udp")
    ca_cert, ca_key = make_ca("Contoso Client Root")
    ca_file = tmp_path / "contoso-root.pem"
    ca_file.write_text(cert_pem(ca_cert))
    carol = profile_with_credentials(alice_profile, *make_client_cert(ca_cert, ca_key, "carol"),
                                     lab.workdir / "carol.ovpn")
    gw.start()
    gw.cli("ca", "add", str(ca_file))
    carol_client = lab.start_openvpn_client("c0", carol, name="carol")
    alice_client = lab.start_openvpn_client("c1", alice_profile, name="alice")
    carol_client.wait_connected(timeout=30)
    alice_client.wait_connected(timeout=30)
    [alice_session] = [s for s in gw.sessions() if s["identity"] == "alice"]

    gw.cli("ca", "remove", "Contoso Client Root")
    try:
        wait_sessions(gw, lambda s: "carol" not in {x["identity"] for x in s}, timeout=2 * reneg_sec,
                      what="carol's session to end after her root CA was removed")
    finally:
        assert lab.ping("c1", lab.vnet_ip)
        assert [s["id"] for s in gw.sessions() if s["identity"] == "alice"] == [alice_session["id"]]
    assert not lab.ping("c0", lab.vnet_ip, count=1)
