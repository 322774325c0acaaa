"""RADIUS sign-in with the real openvpn client against a real FreeRADIUS in the VNet."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest

from bench.run import handshake_seconds

from .freeradius import SECONDARY_RADIUS_IP, FreeRadius, radclient_coa, radclient_disconnect
from .gateway_fixture import RunningGateway, init_gateway, single_transport_profile
from .lab import wait_until

SECRET = "testing123"


def radius_gateway(lab, servers=("10.1.0.10",), **config) -> tuple[RunningGateway, object]:
    args = ["--auth", "radius", "--radius-secret", SECRET]
    for server in servers:
        args += ["--radius-server", server]
    gw = init_gateway(lab, *args)
    if config:
        gw.edit_config(**config)
    profile = gw.lab.workdir / "password.ovpn"
    gw.cli("profile", "--type", "openvpn", "-o", str(profile))
    text = profile.read_text()
    assert "auth-user-pass" in text and "<key>" not in text and "<cert>" not in text
    return gw, single_transport_profile(profile, "udp")


def connect(lab, profile, user: str, password: str, index: int = 0, extra=()):
    creds = lab.workdir / f"creds-{user}-{index}"
    creds.write_text(f"{user}\n{password}\n")
    return lab.start_openvpn_client(lab.clients[index], profile, extra_args=("--auth-user-pass", str(creds), *extra),
                                    name=f"{user}-{index}")


def test_password_accept_and_reject(make_lab):
    lab = make_lab(2)
    radius = FreeRadius(lab).start()
    gw, profile = radius_gateway(lab)
    gw.start()
    alice = connect(lab, profile, "alice", "alice-pass")
    alice.wait_connected(timeout=30)
    login_s = handshake_seconds(alice.log_text())  # client's first packet to tunnel up, by its own clock
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=3)
    [session] = gw.sessions()
    assert session["identity"] == "alice" and session["auth_method"] == "radius"
    assert "Sent Access-Accept" in radius.log_text()
    print(f"login through RADIUS: {login_s * 1000:.0f} ms")

    mark = radius.log_mark()
    mallory = connect(lab, profile, "alice", "wrong", index=1)
    wait_until(lambda: "AUTH_FAILED" in mallory.log_text(), 20, what="AUTH_FAILED at the client")
    radius.wait_for_log("Sent Access-Reject", since=mark)
    assert "auth.refused" in gw.log_text()
    assert len(gw.sessions()) == 1
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)


def test_otp_challenge_through_cr_text(make_lab):
    lab = make_lab(1)
    FreeRadius(lab).start()
    gw, profile = radius_gateway(lab)
    gw.start()
    # a client (GUI / management client) that can answer CR_TEXT prompts announces it in IV_SSO
    client = connect(lab, profile, "otp", "otp-pass", extra=("--setenv", "IV_SSO", "crtext"))
    client.wait_for_log("CR_TEXT:R:Enter your one-time code", timeout=20)
    reply = client.mgmt("cr-response " + base64.b64encode(b"123456").decode())
    assert "SUCCESS" in reply
    client.wait_connected(timeout=20)
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    assert "auth.challenge" in gw.log_text()


def test_otp_wrong_code_is_refused(make_lab):
    lab = make_lab(1)
    FreeRadius(lab).start()
    gw, profile = radius_gateway(lab)
    gw.start()
    client = connect(lab, profile, "otp", "otp-pass", extra=("--setenv", "IV_SSO", "crtext"))
    client.wait_for_log("CR_TEXT:R:Enter your one-time code", timeout=20)
    client.mgmt("cr-response " + base64.b64encode(b"000000").decode())
    wait_until(lambda: "AUTH_FAILED" in client.log_text(), 20, what="AUTH_FAILED after a wrong code")
    assert gw.sessions() == []


def test_slow_server_within_timeout(make_lab):
    """A push-MFA style server holds the answer for 40 s; with a 60 s timeout the login succeeds."""
    lab = make_lab(1)
    FreeRadius(lab, slow_delay=40).start()
    gw, profile = radius_gateway(lab, radius__timeout=60.0, radius__retries=3)
    gw.start()
    client = connect(lab, profile, "slow", "slow-pass")
    client.wait_for_log("AUTH_PENDING", timeout=15)
    client.wait_connected(timeout=70)
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)


def test_failover_and_all_down(make_lab):
    lab = make_lab(2)
    primary = FreeRadius(lab).start()
    secondary = FreeRadius(lab, name="radius2", address=SECONDARY_RADIUS_IP).start()
    gw, profile = radius_gateway(lab, servers=("10.1.0.10", SECONDARY_RADIUS_IP), radius__timeout=3.0,
                                 radius__retries=1)
    gw.start()
    primary.silence()
    client = connect(lab, profile, "alice", "alice-pass")
    client.wait_connected(timeout=30)
    assert "Sent Access-Accept" in secondary.log_text()
    secondary.silence()
    refused = connect(lab, profile, "engineer", "engineer-pass", index=1)
    wait_until(lambda: "AUTH_FAILED" in refused.log_text(), 40, what="refusal with every server down")
    assert "authentication service unavailable" in refused.log_text()
    assert "radius.unavailable" in gw.log_text()


def test_static_address_and_policy_group_from_class(make_lab):
    lab = make_lab(2, extra_pools=("172.16.210.0/24",))
    FreeRadius(lab).start()
    gw, profile = radius_gateway(lab)
    gw.edit_config(policy_groups=[{"name": "engineering", "priority": 10, "address_pools": ["172.16.210.0/24"],
                                   "radius_values": ["engineering"]}])
    gw.start()
    static = connect(lab, profile, "static", "static-pass")
    assert static.wait_connected(timeout=30) == "172.16.201.77"
    engineer = connect(lab, profile, "engineer", "engineer-pass", index=1)
    assert engineer.wait_connected(timeout=30).startswith("172.16.210.")
    assert lab.ping(lab.clients[1], lab.vnet_ip, count=2)
    groups = {s["identity"]: s for s in gw.sessions()}
    assert groups["static"]["virtual_ip"] == "172.16.201.77"


def test_policy_group_from_vendor_attribute(make_lab):
    lab = make_lab(1, extra_pools=("172.16.211.0/24",))
    FreeRadius(lab).start()
    gw, profile = radius_gateway(lab, radius__group_attribute="vendor:32473:1")
    gw.edit_config(policy_groups=[{"name": "sales", "address_pools": ["172.16.211.0/24"],
                                   "radius_values": ["sales"]}])
    gw.start()
    client = connect(lab, profile, "sales", "sales-pass")
    assert client.wait_connected(timeout=30).startswith("172.16.211.")
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)


def test_accounting_start_interim_stop(make_lab):
    lab = make_lab(1)
    radius = FreeRadius(lab).start()
    gw, profile = radius_gateway(lab, radius__interim_interval=2)
    gw.start()
    client = connect(lab, profile, "engineer", "engineer-pass")
    vip = client.wait_connected(timeout=30)
    assert lab.tcp_transfer(lab.clients[0], lab.vnet_ip, 1 << 20, direction="upload")
    time.sleep(2.5)
    client.stop()
    wait_until(lambda: any(r.get("Acct-Status-Type") == "Stop" for r in radius.detail_records()), 15,
               what="Accounting Stop")
    records = radius.detail_records()
    [session] = {r["Acct-Session-Id"].strip('"') for r in records if "Acct-Session-Id" in r}
    assert session.startswith("OVPN_")
    kinds = [r["Acct-Status-Type"] for r in records if "Acct-Session-Id" in r]
    assert kinds[0] == "Start" and "Interim-Update" in kinds and kinds[-1] == "Stop"
    stop = [r for r in records if r.get("Acct-Status-Type") == "Stop"][-1]
    assert stop["Framed-IP-Address"] == vip
    assert int(stop["Acct-Input-Octets"]) > 1 << 20  # what the user sent, at least the transfer
    assert int(stop["Acct-Output-Octets"]) > 0
    assert int(stop["Acct-Input-Packets"]) > 700
    assert stop["Acct-Terminate-Cause"] == "User-Request"
    assert b"engineering" in bytes.fromhex(stop["Class"].removeprefix("0x"))


def test_disconnect_request_from_radius(make_lab):
    lab = make_lab(1)
    FreeRadius(lab).start()
    gw, profile = radius_gateway(lab, radius__dynamic_authorization={"enabled": True, "secret": "dynauth-secret"})
    gw.start()
    client = connect(lab, profile, "alice", "alice-pass")
    client.wait_connected(timeout=30)
    result = radclient_disconnect(lab, "vnet", lab.gw_vnet_ip, "dynauth-secret", {"User-Name": "alice"})
    assert result.code == "Disconnect-ACK", result.output
    wait_until(lambda: gw.sessions() == [], 10, what="session ended by Disconnect-Request")
    unknown = radclient_disconnect(lab, "vnet", lab.gw_vnet_ip, "dynauth-secret", {"User-Name": "nobody"})
    assert unknown.code == "Disconnect-NAK"
    forged = radclient_disconnect(lab, "vnet", lab.gw_vnet_ip, "wrong-secret", {"User-Name": "alice"})
    assert forged.code is None  # dropped, not answered


@pytest.mark.parametrize("sign_replies", [False])
def test_unsigned_replies_are_refused(make_lab, sign_replies):
    """A server (or an attacker) answering without a valid Message-Authenticator is not believed."""
    lab = make_lab(1)
    FreeRadius(lab, sign_replies=sign_replies).start()
    gw, profile = radius_gateway(lab, radius__timeout=3.0, radius__retries=1)
    gw.start()
    client = connect(lab, profile, "alice", "alice-pass")
    wait_until(lambda: "AUTH_FAILED" in client.log_text(), 30, what="refusal of unsigned replies")
    assert gw.sessions() == []
    assert "Message-Authenticator" in gw.log_text()


def test_mschapv2_and_eap_relay_against_freeradius(make_lab):
    """The relays SSTP and IKEv2 will use, through the library API against the real FreeRADIUS."""
    lab = make_lab(1)
    FreeRadius(lab).start()
    tool = str(Path(__file__).parent / "tools" / "radius_relay.py")
    out = lab.run("gw", sys.executable, tool, "10.1.0.10", SECRET, "mschap", "mschap-pass",
                  env=lab.gateway_env()).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["mschapv2_accepted"] and result["mschapv2_success_valid"], result
    assert result["mppe_keys_match"], result  # MS-MPPE-Send/Recv-Key decrypted and equal to RFC 3079's
    assert result["mschapv2_wrong_rejected"] and "E=691" in result["mschapv2_error"], result
    assert result["eap_challenged"] and result["eap_accepted"] and result["eap_success"], result


def test_coa_session_timeout_and_radius_session_timeout(make_lab):
    lab = make_lab(2)
    radius = FreeRadius(lab).start()
    gw, profile = radius_gateway(lab, radius__dynamic_authorization={"enabled": True, "secret": "dynauth-secret"})
    gw.start()
    limited = connect(lab, profile, "timeout", "timeout-pass")  # Session-Timeout = 20 in the reply
    limited.wait_connected(timeout=30)
    alice = connect(lab, profile, "alice", "alice-pass", index=1)
    alice.wait_connected(timeout=30)
    [alice_session] = [s for s in gw.sessions() if s["identity"] == "alice"]
    coa = radclient_coa(lab, "vnet", lab.gw_vnet_ip, "dynauth-secret",
                        {"Acct-Session-Id": alice_session["id"], "Session-Timeout": 4})
    assert coa.code == "CoA-ACK", coa.output
    started = time.monotonic()
    wait_until(lambda: alice_session["id"] not in {s["id"] for s in gw.sessions()}, 15, what="CoA Session-Timeout")
    assert time.monotonic() - started < 10
    [limited_session] = [s for s in gw.sessions() if s["identity"] == "timeout"]
    wait_until(lambda: limited_session["id"] not in {s["id"] for s in gw.sessions()}, 30,
               what="RADIUS Session-Timeout = 20")

    def stops() -> dict:
        return {r["Acct-Session-Id"].strip('"'): r["Acct-Terminate-Cause"] for r in radius.detail_records()
                if r.get("Acct-Status-Type") == "Stop"}

    wait_until(lambda: limited_session["id"] in stops(), 10, what="Accounting Stop")
    assert stops()[alice_session["id"]] == "Session-Timeout"
    assert stops()[limited_session["id"]] == "Session-Timeout"
    # the timed-out token is void: the reconnect had to sign in with the password again
    assert gw.log_text().count('reason="session token expired, sign in again"') == 2
