"""The asyncio RADIUS adapters against tiny in-test UDP responders on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import pytest

from p2sgw.config import DynamicAuthorization, RadiusServer, RadiusSettings
from p2sgw.io.radius import (
    AsyncRadiusClient,
    DynamicAuthorizationServer,
    RadiusUnavailable,
)
from p2sgw.radius import dynauth, mschap
from p2sgw.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCOUNTING_RESPONSE,
    DISCONNECT_ACK,
    DISCONNECT_NAK,
    DISCONNECT_REQUEST,
    RadiusPacket,
    encode_reply,
    encode_request,
    mppe_encrypt_key,
    verify_reply,
    verify_request,
)

pytestmark = pytest.mark.timeout(30)
SECRET = "s3cret"
SECRET_B = SECRET.encode()
HOST = "127.0.0.1"


class Responder(asyncio.DatagramProtocol):
    """A RADIUS server in a few lines: `behaviour(request) -> reply bytes | None`."""

    def __init__(self, behaviour, secret=SECRET_B):
        self.behaviour = behaviour
        self.secret = secret
        self.received: list[RadiusPacket] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        req = RadiusPacket.decode(data, secret=self.secret)
        self.received.append(req)
        reply = self.behaviour(self, req)
        if reply is not None:
            self.transport.sendto(reply, addr)

    def reply(self, req, code, attributes=(), message_authenticator=True):
        return encode_reply(code, req.identifier, req.authenticator, self.secret, attributes,
                            message_authenticator=message_authenticator)

    @property
    def port(self):
        return self.transport.get_extra_info("sockname")[1]


async def responder(behaviour, secret=SECRET_B):
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Responder(behaviour, secret),
                                                   local_addr=(HOST, 0))
    return proto


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pap_server(r, req):
    if req.code == 4:
        return r.reply(req, ACCOUNTING_RESPONSE, message_authenticator=False)
    user, password = req.first("User-Name"), req.first("User-Password")
    if user == "otp":
        if not req.values("State"):
            return r.reply(req, ACCESS_CHALLENGE, [("Reply-Message", "Enter your OTP"),
                                                   ("State", b"0xchallenge-1")])
        ok = req.values("State") == [b"0xchallenge-1"] and password == "123456"
        return r.reply(req, ACCESS_ACCEPT if ok else ACCESS_REJECT)
    if password == "right":
        return r.reply(req, ACCESS_ACCEPT, [("Framed-IP-Address", "172.16.201.9"),
                                            ("Class", b"grp-eng"), ("Session-Timeout", 3600)])
    return r.reply(req, ACCESS_REJECT, [("Reply-Message", "bad password")])


def settings(*ports, timeout=0.6, retries=2, dead_time=30.0, acct_ports=None, **kw):
    acct_ports = acct_ports or ports
    return RadiusSettings(
        servers=[RadiusServer(address=HOST, port=p, accounting_port=a) for p, a in zip(ports, acct_ports)],
        secret=SECRET, timeout=timeout, retries=retries, dead_time=dead_time, **kw)


def run(coro):
    return asyncio.run(coro)


def test_works_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        srv = await responder(pap_server)
        async with AsyncRadiusClient(settings(srv.port)) as client:
            assert (await client.pap("alice", "right")).accepted
        srv.transport.close()
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_pap_accept_reject_and_challenge():
    async def main():
        srv = await responder(pap_server)
        async with AsyncRadiusClient(settings(srv.port)) as client:
            ok = await client.pap("alice", "right", extra=[("Calling-Station-Id", "192.0.2.9")])
            assert ok.accepted and str(ok.framed_ip) == "172.16.201.9"
            assert ok.class_values == [b"grp-eng"] and ok.session_timeout == 3600
            bad = await client.pap("alice", "wrong")
            assert bad.rejected and bad.reply_message == "bad password"
            challenge = await client.pap("otp", "pw")
            assert challenge.challenged and challenge.reply_message == "Enter your OTP"
            answered = await client.pap("otp", "123456", state=challenge.state)
            assert answered.accepted
            first = srv.received[0]
            assert first.attributes[0][0] == 80
            assert first.get("NAS-Identifier") == ["p2sgw"]
            assert first.get("Calling-Station-Id") == ["192.0.2.9"]
            assert srv.received[-1].values("State") == [b"0xchallenge-1"]
        srv.transport.close()
    run(main())


def test_retransmission_then_answer():
    async def main():
        def flaky(r, req):
            return None if len(r.received) < 3 else pap_server(r, req)
        srv = await responder(flaky)
        async with AsyncRadiusClient(settings(srv.port, timeout=1.5, retries=2)) as client:
            t = time.monotonic()
            reply = await client.pap("alice", "right")
            assert reply.accepted
            assert 0.95 < time.monotonic() - t < 1.5  # sends at 0, 0.5 and 1.0 s
        raws = [p.raw for p in srv.received]
        assert len(raws) == 3 and raws[0] == raws[1] == raws[2]
        srv.transport.close()
    run(main())


def test_unsigned_responder_is_ignored_and_secondary_answers():
    async def main():
        forger = await responder(lambda r, req: r.reply(req, ACCESS_ACCEPT, message_authenticator=False))
        good = await responder(pap_server)
        client = AsyncRadiusClient(settings(forger.port, good.port, timeout=0.5, retries=1))
        reply = await client.pap("alice", "wrong")
        assert reply.rejected  # the forged Accept was dropped; the real server said no
        assert len(forger.received) == 2 and len(good.received) == 1
        assert client.drops.total["radius reply dropped: missing Message-Authenticator"] == 2
        # the unsigned server is now dead: the next login goes straight to the good one
        reply = await client.pap("alice", "right")
        assert reply.accepted and len(forger.received) == 2
        client.close()
        forger.transport.close()
        good.transport.close()
    run(main())


def test_no_server_answers():
    async def main():
        silent = await responder(lambda r, req: None)
        closed_port = free_udp_port()
        client = AsyncRadiusClient(settings(silent.port, closed_port, timeout=0.3, retries=1))
        with pytest.raises(RadiusUnavailable) as info:
            await client.pap("alice", "right")
        reason = info.value.reason
        assert reason.startswith("no RADIUS server answered the Access-Request")
        assert f"{HOST}:{silent.port} did not answer (2 sends in 0.3 s)" in reason
        assert f"{HOST}:{closed_port} did not answer" in reason
        client.close()
        with pytest.raises(RadiusUnavailable, match="closed"):
            await client.pap("alice", "right")
        silent.transport.close()
    run(main())


def test_mschapv2_with_rfc2759_credentials_and_mppe_keys():
    auth_challenge = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
    peer_challenge = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
    password_hash = mschap.nt_password_hash("clientPass")

    def server(r, req):
        response = req.first("MS-CHAP2-Response")
        challenge = req.first("MS-CHAP-Challenge")
        ident, peer, nt = response[0], response[2:18], response[26:50]
        expected = mschap.nt_response_from_hash(challenge, peer, req.first("User-Name"), password_hash)
        if nt != expected:
            return r.reply(req, ACCESS_REJECT, [("MS-CHAP-Error", bytes([ident]) + b"E=691 R=0 V=3")])
        s = mschap.authenticator_response_from_hash(password_hash, nt, peer, challenge,
                                                    req.first("User-Name"))
        send, recv = mschap.server_master_keys(password_hash, nt)
        return r.reply(req, ACCESS_ACCEPT, [
            ("MS-CHAP2-Success", bytes([ident]) + s.encode()),
            ("MS-MPPE-Send-Key", mppe_encrypt_key(send, r.secret, req.authenticator)),
            ("MS-MPPE-Recv-Key", mppe_encrypt_key(recv, r.secret, req.authenticator))])

    async def main():
        srv = await responder(server)
        async with AsyncRadiusClient(settings(srv.port)) as client:
            nt = mschap.generate_nt_response(auth_challenge, peer_challenge, "User", "clientPass")
            reply = await client.mschapv2("User", auth_challenge, peer_challenge, nt, 0x42,
                                          extra=[("Framed-Protocol", "PPP")])
            assert reply.accepted
            assert mschap.check_ms_chap2_success(
                reply.ms_chap2_success, 0x42, password_hash, nt_response=nt,
                peer_challenge=peer_challenge, authenticator_challenge=auth_challenge,
                username="User")
            send, recv = mschap.server_master_keys(password_hash, nt)
            assert reply.mppe_send_key == send == bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
            assert reply.mppe_recv_key == recv
            wrong = mschap.generate_nt_response(auth_challenge, peer_challenge, "User", "nope")
            refused = await client.mschapv2("User", auth_challenge, peer_challenge, wrong, 0x43)
            assert refused.rejected
            assert mschap.parse_ms_chap_error(refused.ms_chap_error) == (0x43, {"E": "691", "R": "0", "V": "3"})
        srv.transport.close()
    run(main())


def test_eap_relay_reassembles_and_keeps_state():
    eap = bytes([2, 1]) + (700).to_bytes(2, "big") + bytes(i & 0xFF for i in range(696))

    def server(r, req):
        message = b"".join(req.values("EAP-Message"))
        assert req.attributes[0][0] == 80
        state = req.values("State")
        if not state:
            return r.reply(req, ACCESS_CHALLENGE, [("EAP-Message", bytes([1, 2, 0, 6, 26, 1])),
                                                   ("State", b"round-1")])
        assert message == eap and state == [b"round-1"]
        return r.reply(req, ACCESS_ACCEPT, [("EAP-Message", bytes([3, 2, 0, 4]))])

    async def main():
        srv = await responder(server)
        async with AsyncRadiusClient(settings(srv.port)) as client:
            first = await client.eap("alice", bytes([2, 1, 0, 10]) + b"alice\0")
            assert first.challenged and first.eap_message == bytes([1, 2, 0, 6, 26, 1])
            done = await client.eap("alice", eap, first.state)
            assert done.accepted and done.eap_message == bytes([3, 2, 0, 4])
            assert [len(v) for v in srv.received[1].values("EAP-Message")] == [253, 253, 194]
        srv.transport.close()
    run(main())


def test_accounting_uses_the_accounting_port():
    async def main():
        auth = await responder(pap_server)
        acct = await responder(pap_server)
        async with AsyncRadiusClient(settings(auth.port, acct_ports=[acct.port])) as client:
            reply = await client.accounting("Start", [("Acct-Session-Id", "OVPN_1"),
                                                      ("User-Name", "alice"),
                                                      ("Class", b"grp-eng")])
            assert reply.code == ACCOUNTING_RESPONSE
            await client.accounting(2, {"Acct-Session-Id": "OVPN_1", "Acct-Terminate-Cause": 6})
        assert auth.received == [] and len(acct.received) == 2
        start, stop = acct.received
        assert verify_request(start.raw, SECRET.encode(), require_message_authenticator=False) is None
        assert start.get("Acct-Status-Type") == ["Start"] and start.values("Class") == [b"grp-eng"]
        assert stop.get("Acct-Terminate-Cause") == ["Admin-Reset"]
        auth.transport.close()
        acct.transport.close()
    run(main())


def test_cancelled_request_is_forgotten():
    async def main():
        silent = await responder(lambda r, req: None)
        client = AsyncRadiusClient(settings(silent.port, timeout=5))
        task = asyncio.ensure_future(client.pap("alice", "right"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.core.timer() is None
        client.close()
        silent.transport.close()
    run(main())


# ---- RFC 5176 listener ------------------------------------------------------------------------------


class Asker(asyncio.DatagramProtocol):
    def __init__(self):
        self.replies: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.replies.put_nowait(data)


def disconnect_request(ident, user, secret=SECRET_B):
    raw, _ = encode_request(DISCONNECT_REQUEST, ident, secret,
                            [("User-Name", user), ("Event-Timestamp", int(time.time()))],
                            message_authenticator=True)
    return raw


def test_dynamic_authorization_server():
    calls = []

    async def handler(request):
        calls.append(request.user_name)
        if request.user_name == "alice":
            return True, None
        return False, dynauth.SESSION_CONTEXT_NOT_FOUND

    async def main():
        cfg = settings(1812, dynamic_authorization=DynamicAuthorization(
            enabled=True, listen=HOST, port=free_udp_port(), secret="coa"))
        server = DynamicAuthorizationServer(cfg, handler)
        await server.start()
        loop = asyncio.get_running_loop()
        transport, asker = await loop.create_datagram_endpoint(Asker, local_addr=(HOST, 0))
        dest = server.local_address[:2]

        raw = disconnect_request(1, "alice", b"coa")
        transport.sendto(raw, dest)
        ack = await asyncio.wait_for(asker.replies.get(), 5)
        req = RadiusPacket.decode(raw)
        assert ack[0] == DISCONNECT_ACK
        assert verify_reply(ack, request_code=DISCONNECT_REQUEST, identifier=1,
                            request_authenticator=req.authenticator, secret=b"coa") is None
        transport.sendto(raw, dest)  # retransmission: same answer, handler not called again
        assert await asyncio.wait_for(asker.replies.get(), 5) == ack
        assert calls == ["alice"]

        transport.sendto(disconnect_request(2, "nobody", b"coa"), dest)
        nak = await asyncio.wait_for(asker.replies.get(), 5)
        assert nak[0] == DISCONNECT_NAK and RadiusPacket.decode(nak).get("Error-Cause") == [
            "Session-Context-Not-Found"]

        transport.sendto(disconnect_request(3, "alice", b"wrong-secret"), dest)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asker.replies.get(), 0.3)
        assert server.drops.total["dynauth: bad Request Authenticator"] == 1
        transport.close()
        server.close()
    run(main())


def test_dynamic_authorization_refuses_other_clients_and_wrong_nas():
    async def main():
        cfg = settings(1812, nas_identifier="gw-a", dynamic_authorization=DynamicAuthorization(
            enabled=True, listen=HOST, port=free_udp_port(), allowed_clients=["10.0.0.0/8"]))
        server = DynamicAuthorizationServer(cfg, lambda request: (True, None))
        await server.start()
        assert server.secret == SECRET.encode()  # falls back to the RADIUS secret
        loop = asyncio.get_running_loop()
        transport, asker = await loop.create_datagram_endpoint(Asker, local_addr=(HOST, 0))
        transport.sendto(disconnect_request(1, "alice"), server.local_address[:2])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asker.replies.get(), 0.3)
        assert server.drops.total["dynauth: client not allowed"] == 1
        server.allowed = [ipaddress.ip_network("127.0.0.0/8")]
        raw, _ = encode_request(DISCONNECT_REQUEST, 2, SECRET.encode(),
                                [("User-Name", "alice"), ("NAS-Identifier", "gw-b")],
                                message_authenticator=True)
        transport.sendto(raw, server.local_address[:2])
        nak = await asyncio.wait_for(asker.replies.get(), 5)
        assert nak[0] == DISCONNECT_NAK
        assert RadiusPacket.decode(nak).values("Error-Cause") == [(403).to_bytes(4, "big")]
        transport.close()
        server.close()
    run(main())
