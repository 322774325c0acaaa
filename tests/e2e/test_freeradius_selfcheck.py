"""The lab's FreeRADIUS works: checked with FreeRADIUS's own radclient, no p2sgw code involved.

radclient runs in the gw namespace (10.1.0.1, the gateway's VNet side, the only RADIUS client the server
accepts); client namespaces cannot reach 10.1.0.10 without a tunnel. A failure here points at the fixture
(tests/e2e/freeradius.py) or the machine, not at the gateway.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .freeradius import (
    LAB_GROUP_ATTRIBUTE,
    LAB_VENDOR_ID,
    NAK_USER,
    OTP_CODE,
    OTP_PROMPT,
    SECONDARY_RADIUS_IP,
    FreeRadius,
    mschapv2_request,
    octets,
    parse_detail,
    radclient_coa,
    radclient_disconnect,
)
from .lab import GW_VNET_IP, VNET_IP, Lab


@pytest.fixture
def radius(lab: Lab) -> FreeRadius:
    return FreeRadius(lab, slow_delay=3).start()


def auth(server: FreeRadius, user: str, password: str, **kwargs):
    return server.radclient("auth", {"User-Name": user, "User-Password": password}, **kwargs)


def test_pap_accept_and_reject_signed(radius: FreeRadius) -> None:
    mark = radius.log_mark()
    accepted = auth(radius, "alice", "alice-pass")
    assert accepted.code == "Access-Accept", accepted.output
    assert accepted.sent.get("Message-Authenticator") == "0x00"  # radclient fills in the real value
    assert accepted.attributes["Message-Authenticator"].startswith("0x")

    for user, password in [("alice", "wrong"), ("nobody", "alice-pass")]:
        refused = auth(radius, user, password)
        assert refused.code == "Access-Reject", refused.output
        assert "Message-Authenticator" in refused.attributes
    assert "Sent Access-Reject" in radius.log_text(since=mark)
    assert "Login incorrect" in radius.log_text(since=mark)


@pytest.mark.parametrize("method", ["pap", "chap", "mschap"])  # radtest's "mschap" is MS-CHAPv1
def test_radtest(radius: FreeRadius, method: str) -> None:
    result = radius.lab.run(
        "gw", "radtest", "-t", method, "alice", "alice-pass", radius.address, "0", radius.secret, check=False
    )
    assert "Received Access-Accept" in result.stdout, result.stdout + result.stderr


def test_request_without_message_authenticator_is_dropped(radius: FreeRadius) -> None:
    mark = radius.log_mark()
    result = auth(radius, "alice", "alice-pass", message_authenticator=False, timeout=1, retries=1)
    assert result.code is None, result.output
    radius.wait_for_log("does not contain required Message-Authenticator", since=mark)


def test_reply_attributes(radius: FreeRadius) -> None:
    static = auth(radius, "static", "static-pass")
    assert static.attributes["Framed-IP-Address"] == "172.16.201.77"

    engineer = auth(radius, "engineer", "engineer-pass")
    assert octets(engineer.attributes["Class"]) == b"engineering"  # Class is octets: shown in hex

    sales = auth(radius, "sales", "sales-pass")
    assert sales.attributes[LAB_GROUP_ATTRIBUTE] == "sales"
    # Without our dictionary radclient shows what is on the wire: vendor 32473, type 1.
    raw = auth(radius, "sales", "sales-pass", dictionary_dir=None)
    assert octets(raw.attributes[f"Attr-26.{LAB_VENDOR_ID}.1"]) == b"sales"

    timeout = auth(radius, "timeout", "timeout-pass")
    assert timeout.attributes["Session-Timeout"] == "20"

    assert set(auth(radius, "alice", "alice-pass").attributes) == {"Message-Authenticator"}


def test_otp_challenge_round_trip(radius: FreeRadius) -> None:
    challenge = auth(radius, "otp", "otp-pass")
    assert challenge.code == "Access-Challenge", challenge.output
    assert challenge.attributes["Reply-Message"] == OTP_PROMPT
    assert "Message-Authenticator" in challenge.attributes
    state = octets(challenge.attributes["State"])

    def answer(code: str, with_state: bytes | None = state):
        attrs = [("User-Name", "otp"), ("User-Password", code)]
        return radius.radclient("auth", attrs + ([("State", with_state)] if with_state else []))

    accepted = answer(OTP_CODE)
    assert accepted.code == "Access-Accept", accepted.output
    assert "Message-Authenticator" in accepted.attributes
    assert answer("654321").code == "Access-Reject"
    assert answer(OTP_CODE, with_state=b"forged-state").code == "Access-Reject"
    assert auth(radius, "otp", "wrong-pass").code == "Access-Reject"


def test_otp_code_without_state_is_a_first_round(radius: FreeRadius) -> None:
    # No State means a new login: the code is taken as the password, which is wrong.
    assert auth(radius, "otp", OTP_CODE).code == "Access-Reject"


def test_slow_user_answers_late_and_others_meanwhile(radius: FreeRadius) -> None:
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(auth, radius, "slow", "slow-pass", timeout=10, retries=1)
        time.sleep(0.5)
        quick = auth(radius, "alice", "alice-pass")
        assert quick.code == "Access-Accept"
        assert quick.elapsed < 1.5, "one slow request must not hold up the others"
        assert not slow.done()
        late = slow.result()
    assert late.code == "Access-Accept", late.output
    assert late.elapsed >= 3


def test_mschapv2_success_and_mppe_keys(radius: FreeRadius) -> None:
    exchange = mschapv2_request("mschap", "mschap-pass")
    result = radius.radclient("auth", exchange.attributes)
    assert result.code == "Access-Accept", result.output
    assert octets(result.attributes["MS-CHAP2-Success"]) == exchange.expected_success
    assert octets(result.attributes["MS-MPPE-Send-Key"]) == exchange.expected_send_key
    assert octets(result.attributes["MS-MPPE-Recv-Key"]) == exchange.expected_recv_key

    wrong = mschapv2_request("mschap", "not-the-password")
    refused = radius.radclient("auth", wrong.attributes)
    assert refused.code == "Access-Reject"
    assert "MS-CHAP-Error" in refused.attributes


def test_mschapv2_vectors_rfc2759() -> None:
    exchange = mschapv2_request(
        "User",
        "clientPass",
        authenticator_challenge=bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628"),
        peer_challenge=bytes.fromhex("21402324255E262A28295F2B3A337C7E"),
    )
    response = dict(exchange.attributes)["MS-CHAP2-Response"]
    assert response[-24:].hex().upper() == "82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF"
    assert exchange.expected_success == b"\x01S=407A5589115FD0D6209F510FE9C04566932CDA56"
    assert exchange.expected_send_key.hex().upper() == "8B7CDC149B993A1BA118CB153F56DCCB"  # RFC 3079 3.5.3


def test_eap_md5_relay_with_state(radius: FreeRadius) -> None:
    identity = b"\x02\x01" + (5 + 5).to_bytes(2, "big") + b"\x01alice"  # EAP-Response/Identity
    first = radius.radclient("auth", [("User-Name", "alice"), ("EAP-Message", identity)])
    assert first.code == "Access-Challenge", first.output
    request = octets(first.attributes["EAP-Message"])
    assert request[0] == 1 and request[4] == 4, "EAP-Request/MD5-Challenge"
    eap_id, challenge = request[1], request[6 : 6 + request[5]]
    digest = hashlib.md5(bytes([eap_id]) + b"alice-pass" + challenge).digest()
    response = b"\x02" + bytes([eap_id]) + (6 + 16).to_bytes(2, "big") + b"\x04\x10" + digest
    second = radius.radclient(
        "auth", [("User-Name", "alice"), ("EAP-Message", response), ("State", octets(first.attributes["State"]))]
    )
    assert second.code == "Access-Accept", second.output
    assert octets(second.attributes["EAP-Message"])[0] == 3, "EAP-Success"


def test_status_server(radius: FreeRadius) -> None:
    result = radius.radclient("status", {})
    assert result.code == "Access-Accept", result.output
    assert "Message-Authenticator" in result.attributes


def test_accounting_detail_records(radius: FreeRadius) -> None:
    common = {
        "User-Name": "engineer",
        "Acct-Session-Id": "p2s-0001",
        "Framed-IP-Address": "172.16.201.5",
        "Class": b"engineering",
        "NAS-Identifier": "p2sgw",
    }
    counters = {
        "Acct-Session-Time": 12,
        "Acct-Input-Octets": 1000,
        "Acct-Output-Octets": 2000,
        "Acct-Input-Packets": 10,
        "Acct-Output-Packets": 20,
    }
    steps = [
        {"Acct-Status-Type": "Start"},
        {"Acct-Status-Type": "Interim-Update", **counters},
        {"Acct-Status-Type": "Stop", **counters, "Acct-Terminate-Cause": "User-Request"},
    ]
    for step in steps:
        result = radius.radclient("acct", {**step, **common})
        assert result.code == "Accounting-Response", result.output

    records = radius.detail_records()
    assert [r["Acct-Status-Type"] for r in records] == ["Start", "Interim-Update", "Stop"]
    stop = records[-1]
    assert stop["Acct-Session-Id"] == "p2s-0001"
    assert stop["Framed-IP-Address"] == "172.16.201.5"
    assert octets(stop["Class"]) == b"engineering"
    assert {name: int(stop[name]) for name in counters} == counters
    assert stop["Acct-Terminate-Cause"] == "User-Request"
    assert stop["NAS-IP-Address"] == GW_VNET_IP  # packet source, added by preprocess


def test_parse_detail_repeated_attributes() -> None:
    text = 'Tue Dec  1 09:16:03 2026\n\tClass = 0x61\n\tClass = 0x62\n\tUser-Name = "a \\"b\\""\n\n'
    assert parse_detail(text) == [
        {"_header": "Tue Dec  1 09:16:03 2026", "Class": ["0x61", "0x62"], "User-Name": 'a "b"'}
    ]


def test_two_servers_silence_stop_restart(lab: Lab) -> None:
    primary = FreeRadius(lab).start()
    secondary = FreeRadius(lab, name="radius2", address=SECONDARY_RADIUS_IP).start()
    assert primary.address == VNET_IP
    assert auth(primary, "alice", "alice-pass").code == "Access-Accept"
    assert auth(secondary, "alice", "alice-pass").code == "Access-Accept"

    mark = primary.log_mark()
    primary.silence()
    assert auth(primary, "alice", "alice-pass", timeout=0.5, retries=1).code is None
    assert "Received Access-Request" not in primary.log_text(since=mark), "dropped before the server sees it"
    assert auth(secondary, "alice", "alice-pass").code == "Access-Accept"
    primary.unsilence()
    assert auth(primary, "alice", "alice-pass").code == "Access-Accept"

    start = {"Acct-Status-Type": "Start", "User-Name": "alice", "Acct-Session-Id": "before-restart"}
    assert primary.radclient("acct", start).code == "Accounting-Response"
    primary.stop()
    assert not primary.running
    assert auth(primary, "alice", "alice-pass", timeout=0.5, retries=1).code is None
    primary.start()
    assert auth(primary, "alice", "alice-pass").code == "Access-Accept"
    assert [r["Acct-Session-Id"] for r in primary.detail_records()] == ["before-restart"]


def test_unsigned_replies_option(lab: Lab) -> None:
    """FreeRADIUS 3.2.1 signs no plain reply by itself: sign_replies=False gives a real unsigned server."""
    with FreeRadius(lab, sign_replies=False) as unsigned:
        for user, password, code in [("alice", "alice-pass", "Access-Accept"), ("alice", "x", "Access-Reject")]:
            result = auth(unsigned, user, password)
            assert result.code == code
            assert "Message-Authenticator" not in result.attributes
    assert not unsigned.running


def test_disconnect_and_coa_helpers(lab: Lab) -> None:
    # A FreeRADIUS CoA listener on the gateway's VNet address stands in for the gateway's RFC 5176 server.
    das = FreeRadius(lab, ns="gw", name="das", auth_port=None, acct_port=None, coa_port=3799, clients=[VNET_IP])
    das.start()
    secret = das.secret

    by_user = radclient_disconnect(lab, "vnet", GW_VNET_IP, secret, {"User-Name": "alice"})
    assert by_user.code == "Disconnect-ACK", by_user.output
    by_session = radclient_disconnect(lab, "vnet", GW_VNET_IP, secret, {"Acct-Session-Id": "p2s-0001"})
    assert by_session.code == "Disconnect-ACK", by_session.output
    refused = radclient_disconnect(lab, "vnet", GW_VNET_IP, secret, {"User-Name": NAK_USER})
    assert refused.code == "Disconnect-NAK"
    coa = radclient_coa(lab, "vnet", GW_VNET_IP, secret, {"User-Name": "alice", "Session-Timeout": 60})
    assert coa.code == "CoA-ACK", coa.output
    wrong_secret = radclient_disconnect(lab, "vnet", GW_VNET_IP, "wrong", {"User-Name": "alice"}, timeout=0.5)
    assert wrong_secret.code is None

    log = das.log_text()
    assert "Received Disconnect-Request" in log and 'Acct-Session-Id = "p2s-0001"' in log
    assert "Received CoA-Request" in log and "Session-Timeout = 60" in log
