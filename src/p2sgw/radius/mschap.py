"""MS-CHAPv2 (RFC 2759) and its MPPE keys (RFC 3079), plus the RADIUS attribute helpers (RFC 2548).

MD4 and DES come from pycryptodome (hashlib's MD4 needs OpenSSL's legacy provider, `cryptography`
has no MD4); SHA-1 from hashlib. The gateway mostly *relays* MS-CHAPv2 to RADIUS (SSTP/PPP), so the
usual calls are `ms_chap2_response_attribute()` for the request and `check_ms_chap2_success()` for
the answer; the peer- and server-side computations are here for tests and for a local backend.

Key naming (RFC 3079 §3.5 vs. its own example): `server_master_keys()` returns the keys as the
*server/NAS* uses them. RFC 3079 §3.5's "SendStartKey128" is the server's send key (= the client's
receive key), i.e. MS-MPPE-Send-Key as a RADIUS server sends it to the NAS.
"""

from __future__ import annotations

import hashlib
import hmac

from Crypto.Cipher import DES
from Crypto.Hash import MD4

from .packet import PacketError

MAGIC_SERVER_1 = b"Magic server to client signing constant"
MAGIC_SERVER_2 = b"Pad to make it do more than one iteration"
MPPE_MASTER_MAGIC = b"This is the MPPE Master Key"
MAGIC_CLIENT_SEND = (b"On the client side, this is the send key; "
                     b"on the server side, it is the receive key.")
MAGIC_CLIENT_RECV = (b"On the client side, this is the receive key; "
                     b"on the server side, it is the send key.")
SHS_PAD1 = bytes(40)
SHS_PAD2 = b"\xf2" * 40


def _user_name(username: str | bytes) -> bytes:
    """The user name as hashed in ChallengeHash: without a leading DOMAIN\\ (RFC 2759 §8.2)."""
    raw = username.encode("utf-8") if isinstance(username, str) else bytes(username)
    return raw.rsplit(b"\\", 1)[-1]


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash: MD4(UTF-16LE(password)) (RFC 2759 §8.3)."""
    return MD4.new(password.encode("utf-16-le")).digest()


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """HashNtPasswordHash: MD4(PasswordHash) (RFC 2759 §8.4)."""
    return MD4.new(password_hash).digest()


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes,
                   username: str | bytes) -> bytes:
    """ChallengeHash (RFC 2759 §8.2): SHA1(PeerChallenge || AuthenticatorChallenge || UserName)[:8]."""
    _check(peer_challenge, 16, "peer challenge")
    _check(authenticator_challenge, 16, "authenticator challenge")
    return hashlib.sha1(peer_challenge + authenticator_challenge + _user_name(username)).digest()[:8]


def _des_key(key7: bytes) -> bytes:
    """Expand 56 key bits to a DES key with odd parity (RFC 2759 §8.6 DesEncrypt)."""
    bits = int.from_bytes(key7, "big")
    out = bytearray()
    for i in range(8):
        b = ((bits >> (49 - 7 * i)) & 0x7F) << 1
        out.append(b | (b.bit_count() + 1) % 2)
    return bytes(out)


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (RFC 2759 §8.5): three DES encryptions of the 8-octet challenge."""
    _check(challenge, 8, "challenge")
    _check(password_hash, 16, "password hash")
    z = password_hash + bytes(5)
    return b"".join(DES.new(_des_key(z[i:i + 7]), DES.MODE_ECB).encrypt(challenge)
                    for i in (0, 7, 14))


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes,
                         username: str | bytes, password: str) -> bytes:
    """GenerateNTResponse (RFC 2759 §8.1), the peer's 24-octet NT-Response."""
    return nt_response_from_hash(authenticator_challenge, peer_challenge, username,
                                 nt_password_hash(password))


def nt_response_from_hash(authenticator_challenge: bytes, peer_challenge: bytes,
                          username: str | bytes, password_hash: bytes) -> bytes:
    return challenge_response(challenge_hash(peer_challenge, authenticator_challenge, username),
                              password_hash)


def authenticator_response_from_hash(password_hash: bytes, nt_response: bytes,
                                     peer_challenge: bytes, authenticator_challenge: bytes,
                                     username: str | bytes) -> str:
    """GenerateAuthenticatorResponse (RFC 2759 §8.7) from the NT password hash: "S=<40 HEX>"."""
    _check(nt_response, 24, "NT-Response")
    digest = hashlib.sha1(hash_nt_password_hash(password_hash) + nt_response + MAGIC_SERVER_1).digest()
    ch = challenge_hash(peer_challenge, authenticator_challenge, username)
    return "S=" + hashlib.sha1(digest + ch + MAGIC_SERVER_2).hexdigest().upper()


def generate_authenticator_response(password: str, nt_response: bytes, peer_challenge: bytes,
                                    authenticator_challenge: bytes, username: str | bytes) -> str:
    return authenticator_response_from_hash(nt_password_hash(password), nt_response,
                                            peer_challenge, authenticator_challenge, username)


def check_authenticator_response(password: str, nt_response: bytes, peer_challenge: bytes,
                                 authenticator_challenge: bytes, username: str | bytes,
                                 received: str | bytes) -> bool:
    """CheckAuthenticatorResponse (RFC 2759 §8.8), constant time, case-insensitive hex."""
    expected = generate_authenticator_response(password, nt_response, peer_challenge,
                                               authenticator_challenge, username)
    got = received.decode("ascii", "replace") if isinstance(received, bytes) else received
    return hmac.compare_digest(expected.upper().encode(), got[:42].upper().encode())


# ---- RFC 3079 MPPE keys ---------------------------------------------------------------------------


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """GetMasterKey (RFC 3079 §3.4): SHA1(PasswordHashHash || NT-Response || magic)[:16]."""
    _check(password_hash_hash, 16, "password hash hash")
    _check(nt_response, 24, "NT-Response")
    return hashlib.sha1(password_hash_hash + nt_response + MPPE_MASTER_MAGIC).digest()[:16]


def asymmetric_start_key(master: bytes, key_length: int, is_send: bool, is_server: bool) -> bytes:
    """GetAsymmetricStartKey (RFC 3079 §3.4); key_length 8 or 16."""
    if key_length not in (8, 16):
        raise ValueError("MPPE start keys are 8 or 16 octets")
    if is_send:
        magic = MAGIC_CLIENT_RECV if is_server else MAGIC_CLIENT_SEND
    else:
        magic = MAGIC_CLIENT_SEND if is_server else MAGIC_CLIENT_RECV
    return hashlib.sha1(master + SHS_PAD1 + magic + SHS_PAD2).digest()[:key_length]


def server_master_keys(password_hash: bytes, nt_response: bytes,
                       key_length: int = 16) -> tuple[bytes, bytes]:
    """(send, receive) start keys as the server/NAS uses them: what a RADIUS server returns in
    MS-MPPE-Send-Key and MS-MPPE-Recv-Key. The client's send key is the server's receive key."""
    mk = master_key(hash_nt_password_hash(password_hash), nt_response)
    return (asymmetric_start_key(mk, key_length, is_send=True, is_server=True),
            asymmetric_start_key(mk, key_length, is_send=False, is_server=True))


# ---- RADIUS attributes (RFC 2548) -----------------------------------------------------------------


def ms_chap2_response_attribute(ident: int, peer_challenge: bytes, nt_response: bytes,
                                flags: int = 0) -> bytes:
    """MS-CHAP2-Response (311/25), 50 octets: Ident || Flags || Peer-Challenge(16) ||
    Reserved(8 zero) || Response(24) (RFC 2548 §2.3.2)."""
    if not 0 <= ident <= 255:
        raise ValueError("CHAP identifier out of range")
    _check(peer_challenge, 16, "peer challenge")
    _check(nt_response, 24, "NT-Response")
    return bytes([ident, flags]) + peer_challenge + bytes(8) + nt_response


def parse_ms_chap2_success(value: bytes) -> tuple[int, str, str]:
    """MS-CHAP2-Success (311/26) -> (ident, "S=<40 HEX>", message after " M=" or "")."""
    if len(value) < 43:
        raise PacketError(f"MS-CHAP2-Success of {len(value)} octets")
    text = value[1:].decode("ascii", "replace")
    if not text.startswith("S=") or len(text) < 42:
        raise PacketError("MS-CHAP2-Success without S=<authenticator response>")
    rest = text[42:]
    message = rest[3:] if rest.startswith(" M=") else rest.strip()
    return value[0], text[:42], message


def check_ms_chap2_success(value: bytes | None, ident: int, password_hash: bytes | None = None, *,
                           nt_response: bytes = b"", peer_challenge: bytes = b"",
                           authenticator_challenge: bytes = b"", username: str | bytes = "",
                           expected: str | None = None) -> bool:
    """Whether an MS-CHAP2-Success answers our request: the ident matches and, when the expected
    Authenticator Response is known (given, or computable from `password_hash`), it matches too.
    A relaying NAS does not know the password: it passes the S= value on to the peer, which checks
    it (then only the ident and the format are checked here)."""
    if value is None:
        return False
    try:
        got_ident, auth_response, _ = parse_ms_chap2_success(value)
    except PacketError:
        return False
    if got_ident != ident:
        return False
    if expected is None and password_hash is not None:
        expected = authenticator_response_from_hash(password_hash, nt_response, peer_challenge,
                                                    authenticator_challenge, username)
    if expected is None:
        return all(c in "0123456789ABCDEFabcdef" for c in auth_response[2:])
    return hmac.compare_digest(expected.upper().encode(), auth_response.upper().encode())


def parse_ms_chap_error(value: bytes) -> tuple[int, dict[str, str]]:
    """MS-CHAP-Error (311/2) -> (ident, {"E": "691", "R": "0", "C": <hex>, "V": "3", "M": text})."""
    if len(value) < 2:
        raise PacketError(f"MS-CHAP-Error of {len(value)} octets")
    text = value[1:].decode("utf-8", "replace")
    if text.startswith("M="):
        head, message, has_message = "", text[2:], True
    else:
        head, sep, message = text.partition(" M=")
        has_message = bool(sep)
    fields = {k: v for k, eq, v in (t.partition("=") for t in head.split()) if eq}
    if has_message:
        fields["M"] = message
    return value[0], fields


def _check(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise ValueError(f"{what} must be {length} octets, got {len(value)}")
