"""The sans-I/O RADIUS client: retransmission, failover, dead servers, reply verification."""

from __future__ import annotations

import pytest
from radius_helpers import answer, resign

from p2sgw.config import RadiusServer, RadiusSettings
from p2sgw.radius.client import (
    Dropped,
    Failed,
    RadiusClient,
    Response,
    Server,
    ServerDown,
    ServerUp,
)
from p2sgw.radius.packet import (
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    STATUS_SERVER,
    RadiusPacket,
    encode_reply,
    recover_password,
    verify_request,
)

PRIMARY = Server("192.0.2.10", 1812, 1813, b"primary-secret")
SECONDARY = Server("192.0.2.20", 1812, 1813, b"secondary-secret")
P_AUTH, S_AUTH = ("192.0.2.10", 1812), ("192.0.2.20", 1812)
T0 = 1000.0
PAP = [("User-Name", "alice"), ("User-Password", "correct horse")]


def make(servers=(PRIMARY, SECONDARY), **kw):
    kw.setdefault("timeout", 30.0)
    kw.setdefault("retries", 2)
    kw.setdefault("dead_time", 60.0)
    return RadiusClient(list(servers), **kw)


def events(client):
    out = []
    while (e := client.next_event()) is not None:
        out.append(e)
    return out


def sent(client):
    return client.datagrams_to_send()


def run_until(client, until):
    """Fire the client's timers up to `until`; returns [(time, datagram, addr)]."""
    out = []
    while (t := client.timer()) is not None and t <= until:
        client.handle_timer(t)
        out += [(t, d, a) for d, a in sent(client)]
    return out


def test_request_content_and_accept():
    c = make(nas_ip_address="198.51.100.1")
    h = c.send_request(ACCESS_REQUEST, PAP + [("Calling-Station-Id", "203.0.113.9")], T0)
    [(data, addr)] = sent(c)
    assert addr == P_AUTH
    req = RadiusPacket.decode(data, secret=PRIMARY.secret)
    assert req.attributes[0][0] == 80  # Message-Authenticator first
    assert req.get("User-Password") == ["correct horse"]
    assert req.get("NAS-Identifier") == ["p2sgw"]
    assert req.get("NAS-IP-Address") == ["198.51.100.1"]
    assert req.get("Service-Type") == ["Framed-User"]
    assert req.get("NAS-Port-Type") == ["Virtual"]
    assert req.get("Calling-Station-Id") == ["203.0.113.9"]
    assert c.timer() == pytest.approx(T0 + 10)
    c.receive_datagram(answer(data, PRIMARY.secret, attributes=[("Session-Timeout", 60)]), P_AUTH,
                       T0 + 0.1)
    [ev] = events(c)
    assert isinstance(ev, Response) and ev.handle == h and ev.server == "192.0.2.10:1812"
    assert ev.packet.accepted and ev.packet.session_timeout == 60
    assert c.timer() is None


def test_caller_overrides_defaults():
    c = make()
    c.send_request(ACCESS_REQUEST, PAP + [("Service-Type", "Authenticate-Only"),
                                          ("NAS-Identifier", "vpn-1")], T0)
    [(data, _)] = sent(c)
    req = RadiusPacket.decode(data)
    assert req.get("Service-Type") == ["Authenticate-Only"]
    assert req.get("NAS-Identifier") == ["vpn-1"]
    c2 = make()
    c2.send_request(ACCESS_REQUEST, PAP, T0, defaults=False)
    req2 = RadiusPacket.decode(sent(c2)[0][0])
    assert "NAS-Identifier" not in req2 and "Service-Type" not in req2


def test_retransmissions_are_identical_and_spread_over_timeout():
    c = make()
    c.send_request(ACCESS_REQUEST, PAP, T0)
    [(first, addr)] = sent(c)
    retrans = run_until(c, T0 + 29.9)
    assert [t for t, _, _ in retrans] == pytest.approx([T0 + 10, T0 + 20])
    assert all(d == first and a == addr for _, d, a in retrans)  # same id + authenticator
    assert events(c) == []
    # answering the retransmission completes the request
    c.receive_datagram(answer(first, PRIMARY.secret), P_AUTH, T0 + 21)
    assert isinstance(events(c)[0], Response)


def test_failover_uses_new_identifier_authenticator_and_rehidden_password():
    c = make()
    h = c.send_request(ACCESS_REQUEST, PAP, T0)
    [(first, _)] = sent(c)
    out = run_until(c, T0 + 30)
    failover = [(t, d, a) for t, d, a in out if a == S_AUTH]
    assert len(failover) == 1 and failover[0][0] == pytest.approx(T0 + 30)
    second = failover[0][1]
    r1 = RadiusPacket.decode(first, secret=PRIMARY.secret)
    r2 = RadiusPacket.decode(second, secret=SECONDARY.secret)
    assert r2.identifier != r1.identifier
    assert r2.authenticator != r1.authenticator
    assert r2.values("User-Password") != r1.values("User-Password")
    assert recover_password(r2.values("User-Password")[0], SECONDARY.secret,
                            r2.authenticator) == "correct horse"
    [down] = events(c)
    assert isinstance(down, ServerDown) and down.server == "192.0.2.10:1812"
    assert down.until == pytest.approx(T0 + 90)
    # a late answer from the primary to the old request completes nothing
    c.receive_datagram(answer(first, PRIMARY.secret), P_AUTH, T0 + 31)
    [late] = events(c)
    assert isinstance(late, Dropped) and late.reason == "no request pending with this identifier"
    c.receive_datagram(answer(second, SECONDARY.secret, ACCESS_REJECT), S_AUTH, T0 + 32)
    [ev] = events(c)
    assert isinstance(ev, Response) and ev.handle == h and ev.server == "192.0.2.20:1812"
    assert ev.packet.rejected


def test_dead_primary_is_skipped_then_retried_after_dead_time():
    c = make()
    c.send_request(ACCESS_REQUEST, PAP, T0)
    sent(c)
    out = run_until(c, T0 + 30)
    second = next(d for _, d, a in out if a == S_AUTH)
    c.receive_datagram(answer(second, SECONDARY.secret), S_AUTH, T0 + 31)
    events(c)
    # while dead: new logins go straight to the secondary
    c.send_request(ACCESS_REQUEST, PAP, T0 + 40)
    [(d, a)] = sent(c)
    assert a == S_AUTH
    c.receive_datagram(answer(d, SECONDARY.secret), S_AUTH, T0 + 41)
    assert [type(e) for e in events(c)] == [Response]
    assert c.server_status(T0 + 41)[0]["dead"]
    # after dead_time the primary is asked again, and comes back
    c.send_request(ACCESS_REQUEST, PAP, T0 + 91)
    [(d, a)] = sent(c)
    assert a == P_AUTH
    c.receive_datagram(answer(d, PRIMARY.secret), P_AUTH, T0 + 92)
    evs = events(c)
    assert isinstance(evs[0], ServerUp) and evs[0].server == "192.0.2.10:1812"
    assert isinstance(evs[1], Response)


def test_slow_but_alive_server_is_not_marked_dead():
    """A server that answers other requests is only slow on this one (push MFA): no dead mark."""
    c = make()
    c.send_request(ACCESS_REQUEST, PAP, T0)  # the push-MFA login nobody approves
    sent(c)
    c.send_request(ACCESS_REQUEST, [("User-Name", "bob"), ("User-Password", "x")], T0 + 1)
    [(quick, _)] = sent(c)
    c.receive_datagram(answer(quick, PRIMARY.secret), P_AUTH, T0 + 2)
    assert isinstance(events(c)[0], Response)
    run_until(c, T0 + 30)
    assert not any(isinstance(e, ServerDown) for e in events(c))
    c.send_request(ACCESS_REQUEST, PAP, T0 + 31)
    assert [a for _, a in sent(c)] == [P_AUTH]


def test_all_servers_silent_fails_with_clear_reason_and_later_retries_all():
    c = make()
    h = c.send_request(ACCESS_REQUEST, PAP, T0)
    sent(c)
    out = run_until(c, T0 + 60)
    assert [a for _, _, a in out].count(P_AUTH) == 2 and [a for _, _, a in out].count(S_AUTH) == 3
    evs = events(c)
    assert [type(e) for e in evs] == [ServerDown, ServerDown, Failed]
    failed = evs[-1]
    assert failed.handle == h
    assert failed.reason == ("no RADIUS server answered the Access-Request: "
                             "192.0.2.10:1812 did not answer (3 sends in 30 s); "
                             "192.0.2.20:1812 did not answer (3 sends in 30 s)")
    assert c.timer() is None
    # every server is marked dead: the next login still asks them (in order) instead of refusing
    c.send_request(ACCESS_REQUEST, PAP, T0 + 61)
    [(d, a)] = sent(c)
    assert a == P_AUTH
    c.receive_datagram(answer(d, PRIMARY.secret), P_AUTH, T0 + 62)
    assert isinstance(events(c)[-1], Response)


def test_server_marked_dead_meanwhile_is_skipped():
    third = Server("192.0.2.30", 1812, 1813, b"third")
    c = make(servers=(PRIMARY, SECONDARY, third))
    c.send_request(ACCESS_REQUEST, PAP, T0)              # r_y: the primary never answers it
    c.send_request(ACCESS_REQUEST, PAP, T0)              # r_z: answered, so the primary is alive
    [_, (z, _)] = sent(c)
    c.receive_datagram(answer(z, PRIMARY.secret), P_AUTH, T0 + 1)
    run_until(c, T0 + 30)                                # r_y -> secondary, primary not dead
    c.send_request(ACCESS_REQUEST, PAP, T0 + 31)         # r_x starts at the primary
    assert [a for _, a in sent(c)] == [P_AUTH]
    out = run_until(c, T0 + 60)                          # r_y: secondary silent -> dead -> third
    assert out[-1][2] == ("192.0.2.30", 1812)
    out = run_until(c, T0 + 61)                          # r_x: primary silent -> skip secondary
    assert [a for _, _, a in out] == [("192.0.2.30", 1812)]
    downs = [e.server for e in events(c) if isinstance(e, ServerDown)]
    assert downs == ["192.0.2.20:1812", "192.0.2.10:1812"]


def test_unsigned_forged_and_misrouted_replies_are_dropped():
    c = make()
    h = c.send_request(ACCESS_REQUEST, PAP, T0)
    [(data, _)] = sent(c)
    req = RadiusPacket.decode(data)
    cases = [
        (answer(data, PRIMARY.secret, message_authenticator=False), P_AUTH,
         "missing Message-Authenticator"),
        (answer(data, b"guessed-secret"), P_AUTH, "bad Response Authenticator"),
        (resign(answer(data, PRIMARY.secret)[:22] + bytes(16) + answer(data, PRIMARY.secret)[38:],
                req.authenticator, PRIMARY.secret), P_AUTH, "bad Message-Authenticator"),
        (answer(data, PRIMARY.secret), ("198.51.100.66", 1812),
         "reply from an address that is not a RADIUS server"),
        (answer(data, PRIMARY.secret), ("192.0.2.10", 1999),
         "reply from an address that is not a RADIUS server"),
        (answer(data, SECONDARY.secret), S_AUTH, "no request pending with this identifier"),
        (b"\x02\x00", P_AUTH, "malformed: shorter than a RADIUS header"),
        (encode_reply(ACCOUNTING_RESPONSE, req.identifier, req.authenticator, PRIMARY.secret),
         P_AUTH, "unexpected code 5 for Access-Request"),
    ]
    for datagram, addr, reason in cases:
        c.receive_datagram(datagram, addr, T0 + 1)
        [ev] = events(c)
        assert isinstance(ev, Dropped) and ev.reason == reason and ev.addr == addr
    assert sum(c.drops.values()) == len(cases)
    assert c.drops["missing Message-Authenticator"] == 1
    # the request is still waiting; the genuine answer completes it
    c.receive_datagram(answer(data, PRIMARY.secret), P_AUTH, T0 + 2)
    [ev] = events(c)
    assert isinstance(ev, Response) and ev.handle == h


def test_legacy_server_without_message_authenticator_if_configured():
    c = make(require_message_authenticator=False)
    c.send_request(ACCESS_REQUEST, PAP, T0)
    [(data, _)] = sent(c)
    c.receive_datagram(answer(data, PRIMARY.secret, message_authenticator=False), P_AUTH, T0 + 1)
    assert isinstance(events(c)[0], Response)


def test_accounting_goes_to_accounting_port_with_delay_time():
    c = make()
    c.send_request(ACCOUNTING_REQUEST, [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "S1"),
                                        ("Class", b"\x01grp")], T0)
    [(data, addr)] = sent(c)
    assert addr == ("192.0.2.10", 1813)
    assert verify_request(data, PRIMARY.secret, require_message_authenticator=False) is None
    pkt = RadiusPacket.decode(data)
    assert pkt.get("Acct-Delay-Time") == [0] and pkt.get("Acct-Status-Type") == ["Start"]
    assert pkt.values("Class") == [b"\x01grp"]
    assert "Service-Type" not in pkt and pkt.get("NAS-Identifier") == ["p2sgw"]
    out = run_until(c, T0 + 30)
    fo = [d for _, d, a in out if a == ("192.0.2.20", 1813)]
    assert len(fo) == 1
    pkt2 = RadiusPacket.decode(fo[0])
    assert pkt2.get("Acct-Delay-Time") == [30] and pkt2.identifier != pkt.identifier
    assert verify_request(fo[0], SECONDARY.secret, require_message_authenticator=False) is None
    c.receive_datagram(encode_reply(ACCOUNTING_RESPONSE, pkt2.identifier, pkt2.authenticator,
                                    SECONDARY.secret, message_authenticator=False),
                       ("192.0.2.20", 1813), T0 + 31)
    assert isinstance(events(c)[-1], Response)


def test_caller_acct_delay_time_is_added_to():
    c = make()
    c.send_request(ACCOUNTING_REQUEST, [("Acct-Status-Type", "Stop"), ("Acct-Delay-Time", 12)], T0)
    pkt = RadiusPacket.decode(sent(c)[0][0])
    assert pkt.get("Acct-Delay-Time") == [12]


def test_auth_and_accounting_identifier_spaces_are_separate():
    c = make(servers=[PRIMARY])
    for _ in range(256):
        c.send_request(ACCESS_REQUEST, PAP, T0)
    ids = {RadiusPacket.decode(d).identifier for d, _ in sent(c)}
    assert len(ids) == 256
    h = c.send_request(ACCESS_REQUEST, PAP, T0)
    assert sent(c) == []
    [ev] = events(c)
    assert isinstance(ev, Failed) and ev.handle == h and "256 requests outstanding" in ev.reason
    c.send_request(ACCOUNTING_REQUEST, [("Acct-Status-Type", "Start")], T0)
    assert [a for _, a in sent(c)] == [("192.0.2.10", 1813)]


def test_identifier_exhaustion_moves_to_next_server():
    c = make()
    for _ in range(256):
        c.send_request(ACCESS_REQUEST, PAP, T0)
    sent(c)
    c.send_request(ACCESS_REQUEST, PAP, T0)
    assert [a for _, a in sent(c)] == [S_AUTH]


def test_cancel_and_no_servers_and_bad_attributes():
    c = make()
    h = c.send_request(ACCESS_REQUEST, PAP, T0)
    [(data, _)] = sent(c)
    c.cancel(h)
    assert c.timer() is None
    c.receive_datagram(answer(data, PRIMARY.secret), P_AUTH, T0 + 1)
    assert isinstance(events(c)[0], Dropped)

    empty = make(servers=[])
    h = empty.send_request(ACCESS_REQUEST, PAP, T0)
    [ev] = events(empty)
    assert isinstance(ev, Failed) and ev.reason == "no RADIUS servers configured"

    with pytest.raises(ValueError):
        c.send_request(ACCESS_REQUEST, [("User-Password", "x" * 200)], T0)
    assert sent(c) == [] and c.timer() is None


def test_no_retries_and_zero_dead_time():
    c = make(retries=0, dead_time=0)
    c.send_request(ACCESS_REQUEST, PAP, T0)
    sent(c)
    out = run_until(c, T0 + 30)
    assert [(t, a) for t, _, a in out] == [(T0 + 30, S_AUTH)]
    assert not any(isinstance(e, ServerDown) for e in events(c))
    c.send_request(ACCESS_REQUEST, PAP, T0 + 31)
    assert [a for _, a in sent(c)] == [P_AUTH]  # never marked dead


def test_from_settings():
    settings = RadiusSettings(
        servers=[RadiusServer(address="radius.example", port=1645, accounting_port=1646),
                 RadiusServer(address="192.0.2.20", secret="own")],
        secret="shared", timeout=90, retries=3, dead_time=120, nas_identifier="gw-a",
        nas_ip_address="198.51.100.1")
    c = RadiusClient.from_settings(settings, {"radius.example": "192.0.2.10"})
    assert [s.name for s in c.servers] == ["192.0.2.10:1645", "192.0.2.20:1812"]
    assert [s.secret for s in c.servers] == [b"shared", b"own"]
    assert c.servers[0].accounting_port == 1646
    assert (c.timeout, c.retries, c.dead_time, c.nas_identifier, c.nas_ip_address) == (
        90, 3, 120, "gw-a", "198.51.100.1")
    c.send_request(ACCESS_REQUEST, PAP, T0)
    assert sent(c)[0][1] == ("192.0.2.10", 1645)
    assert c.timer() == pytest.approx(T0 + 22.5)


def test_status_server_is_signed_and_answered_on_the_auth_port():
    c = make()
    c.send_request(STATUS_SERVER, [], T0)
    [(data, addr)] = sent(c)
    assert addr == P_AUTH and data[0] == STATUS_SERVER and data[20] == 80
    c.receive_datagram(answer(data, PRIMARY.secret, message_authenticator=False), P_AUTH, T0 + 1)
    assert isinstance(events(c)[0], Dropped)  # RFC 5997: the answer must be signed too
    c.receive_datagram(answer(data, PRIMARY.secret), P_AUTH, T0 + 1)
    assert isinstance(events(c)[0], Response)
    with pytest.raises(ValueError):
        c.send_request(40, [], T0)
