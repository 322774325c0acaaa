"""Drive p2sgw's RADIUS library (MS-CHAPv2 and EAP relays, as SSTP/IKEv2 will use them) against a real
server. Runs inside a lab namespace; prints one JSON object with what the server answered.

    python radius_relay.py SERVER SECRET USER PASSWORD
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

from p2sgw.config import RadiusServer, RadiusSettings
from p2sgw.io.radius import AsyncRadiusClient
from p2sgw.radius import mschap

EAP_RESPONSE, EAP_REQUEST = 2, 1
EAP_IDENTITY, EAP_MD5 = 1, 4


def eap(code: int, ident: int, typ: int, data: bytes) -> bytes:
    return bytes([code, ident]) + (5 + len(data)).to_bytes(2, "big") + bytes([typ]) + data


async def main(server: str, secret: str, user: str, password: str) -> dict:
    settings = RadiusSettings(servers=[RadiusServer(address=server)], secret=secret, timeout=5, retries=1)
    out: dict = {}
    async with AsyncRadiusClient(settings) as client:
        # MS-CHAPv2: the NAS relays the peer's NT-Response; the server proves it knows the password
        auth_challenge, peer_challenge, ident = os.urandom(16), os.urandom(16), 7
        nt_response = mschap.generate_nt_response(auth_challenge, peer_challenge, user, password)
        reply = await client.mschapv2(user, auth_challenge, peer_challenge, nt_response, ident)
        password_hash = mschap.nt_password_hash(password)
        send, recv = mschap.server_master_keys(password_hash, nt_response)
        out["mschapv2_accepted"] = reply.accepted
        out["mschapv2_success_valid"] = mschap.check_ms_chap2_success(
            reply.ms_chap2_success, ident, password_hash, nt_response=nt_response, peer_challenge=peer_challenge,
            authenticator_challenge=auth_challenge, username=user)
        out["mppe_keys_match"] = reply.mppe_send_key == send and reply.mppe_recv_key == recv
        wrong = await client.mschapv2(user, auth_challenge, peer_challenge,
                                      mschap.generate_nt_response(auth_challenge, peer_challenge, user, "wrong"),
                                      ident)
        out["mschapv2_wrong_rejected"] = wrong.rejected
        out["mschapv2_error"] = (wrong.ms_chap_error or b"").decode("latin-1")
        # EAP relay (EAP-MD5 here): Identity, then the server's challenge answered with State
        first = await client.eap(user, eap(EAP_RESPONSE, 1, EAP_IDENTITY, user.encode()))
        request = first.eap_message or b""
        out["eap_challenged"] = first.challenged and len(request) > 5 and request[0] == EAP_REQUEST
        if out["eap_challenged"] and request[4] == EAP_MD5:
            ident2, size = request[1], request[5]
            challenge = request[6 : 6 + size]
            value = hashlib.md5(bytes([ident2]) + password.encode() + challenge).digest()
            second = await client.eap(user, eap(EAP_RESPONSE, ident2, EAP_MD5, bytes([16]) + value),
                                      state=first.state)
            out["eap_accepted"] = second.accepted
            out["eap_success"] = (second.eap_message or b"\0")[0] == 3
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
