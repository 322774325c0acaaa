"""RADIUS packets (RFC 2865/2866/2869/3579/5176, RFC 2548) on top of pyrad.

pyrad (2.6) does the dictionary (names, codes, types, named values), the value codecs, User-Password
hiding and the assembly of requests and replies including the Message-Authenticator, which it puts
first. This module wraps it and adds what a client facing forged replies needs and pyrad lacks:

* a strict framing check of received bytes (pyrad silently truncates an attribute whose length runs
  past the end of the packet) and one error type, `PacketError`, for anything undecodable;
* verification of a reply from its raw bytes: Response Authenticator, a Message-Authenticator that
  must be present and valid (BlastRADIUS, CVE-2024-3596), the reply code, no foreign Proxy-State;
* verification of accounting-style requests (Disconnect/CoA, RFC 5176 §3.5) with M-A required;
* MS-MPPE-Send/Recv-Key decryption with full validation (RFC 2548 §2.4.2; pyrad's SaltDecrypt does
  not check the key length against the data);
* `bytes` values are always wire values: pyrad's octets encoder would turn b"0x41" into b"A", which
  corrupts a State or Class that happens to look like hex.

Attribute keys everywhere: a dictionary name ("User-Name", "MS-CHAP2-Response"), a type code (int)
or a (vendor-id, vendor-type) tuple. Values: Python values of the attribute's type (str, int,
IPv4 address string ...) or `bytes` taken as the raw wire value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from pyrad import packet as _pyrad
from pyrad import tools as _tools
from pyrad.dictionary import Attribute, Dictionary

# ---- codes ------------------------------------------------------------------------------------
ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12
DISCONNECT_REQUEST = 40
DISCONNECT_ACK = 41
DISCONNECT_NAK = 42
COA_REQUEST = 43
COA_ACK = 44
COA_NAK = 45

CODE_NAMES = {
    ACCESS_REQUEST: "Access-Request",
    ACCESS_ACCEPT: "Access-Accept",
    ACCESS_REJECT: "Access-Reject",
    ACCOUNTING_REQUEST: "Accounting-Request",
    ACCOUNTING_RESPONSE: "Accounting-Response",
    ACCESS_CHALLENGE: "Access-Challenge",
    STATUS_SERVER: "Status-Server",
    DISCONNECT_REQUEST: "Disconnect-Request",
    DISCONNECT_ACK: "Disconnect-ACK",
    DISCONNECT_NAK: "Disconnect-NAK",
    COA_REQUEST: "CoA-Request",
    COA_ACK: "CoA-ACK",
    COA_NAK: "CoA-NAK",
}

# Which reply codes answer which request code.
REPLY_CODES = {
    ACCESS_REQUEST: frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE}),
    STATUS_SERVER: frozenset({ACCESS_ACCEPT, ACCOUNTING_RESPONSE}),
    ACCOUNTING_REQUEST: frozenset({ACCOUNTING_RESPONSE}),
    DISCONNECT_REQUEST: frozenset({DISCONNECT_ACK, DISCONNECT_NAK}),
    COA_REQUEST: frozenset({COA_ACK, COA_NAK}),
}

# ---- attribute types used by the code -----------------------------------------------------------
USER_NAME = 1
USER_PASSWORD = 2
FRAMED_IP_ADDRESS = 8
REPLY_MESSAGE = 18
STATE = 24
CLASS = 25
VENDOR_SPECIFIC = 26
SESSION_TIMEOUT = 27
IDLE_TIMEOUT = 28
PROXY_STATE = 33
ACCT_DELAY_TIME = 41
EVENT_TIMESTAMP = 55
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80
ACCT_INTERIM_INTERVAL = 85
ERROR_CAUSE = 101

VENDOR_MICROSOFT = 311
MS_CHAP_ERROR = (VENDOR_MICROSOFT, 2)
MS_CHAP_CHALLENGE = (VENDOR_MICROSOFT, 11)
MS_MPPE_SEND_KEY = (VENDOR_MICROSOFT, 16)
MS_MPPE_RECV_KEY = (VENDOR_MICROSOFT, 17)
MS_CHAP2_RESPONSE = (VENDOR_MICROSOFT, 25)
MS_CHAP2_SUCCESS = (VENDOR_MICROSOFT, 26)

HEADER_LEN = 20
MAX_PACKET_LEN = 4096  # RFC 2865 §3
MAX_VALUE_LEN = 253
ZERO_AUTHENTICATOR = bytes(16)

AttrKey = str | int | tuple[int, int]
AttrList = Iterable[tuple[AttrKey, Any]] | Mapping[AttrKey, Any]


class RadiusError(Exception):
    """Base of every error this package raises on purpose."""


class PacketError(RadiusError):
    """Received bytes (or one attribute value in them) that cannot be decoded."""


# ---- dictionary -------------------------------------------------------------------------------


@functools.cache
def dictionary() -> Dictionary:
    """The dictionary shipped with p2sgw (RFC attributes + Microsoft VSAs), parsed once."""
    with resources.as_file(resources.files(__package__) / "dictionary") as path:
        return Dictionary(str(path))


def resolve(key: AttrKey) -> tuple[int | tuple[int, int], Attribute | None]:
    """(wire key, dictionary entry or None) for an attribute name, code or (vendor, type)."""
    d = dictionary()
    if isinstance(key, str):
        if key not in d.attributes:
            raise KeyError(f"unknown RADIUS attribute {key!r}")
        return d.attrindex.GetForward(key), d.attributes[key]
    if isinstance(key, int) and not isinstance(key, bool) and 1 <= key <= 255:
        wire: int | tuple[int, int] = key
    elif (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) for k in key)
          and 0 <= key[0] < 1 << 32 and 0 <= key[1] <= 255):
        wire = (key[0], key[1]) if key[0] else key[1]
    else:
        raise KeyError(f"invalid RADIUS attribute key {key!r}")
    name = d.attrindex.GetBackward(wire) if d.attrindex.HasBackward(wire) else None
    return wire, (d.attributes[name] if name is not None else None)


def attribute_name(wire: int | tuple[int, int]) -> str | None:
    d = dictionary()
    return d.attrindex.GetBackward(wire) if d.attrindex.HasBackward(wire) else None


def encode_value(attr: Attribute, value: Any) -> bytes:
    """A Python value -> wire bytes for one attribute (named values by their name)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and attr.values.HasForward(value):
        return attr.values.GetForward(value)
    try:
        if attr.type == "octets":
            if isinstance(value, str):
                return value.encode("utf-8")
            raise TypeError(f"{type(value).__name__} for octets")
        if attr.type in ("ipaddr", "ipv6addr") and isinstance(value, (ipaddress.IPv4Address,
                                                                      ipaddress.IPv6Address)):
            value = str(value)
        if attr.type in ("integer", "date", "short", "byte", "signed", "integer64"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{type(value).__name__} for {attr.type}")
            value = int(value)  # IntEnum -> int
        return _tools.EncodeAttr(attr.type, value)
    except (TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"cannot encode {value!r} as {attr.name} ({attr.type}): {exc}") from None


def decode_value(attr: Attribute, raw: bytes) -> Any:
    """Wire bytes -> Python value by the dictionary type (named values by name); PacketError."""
    if attr.values.HasBackward(raw):
        return attr.values.GetBackward(raw)
    try:
        value = _tools.DecodeAttr(attr.type, raw)
    except Exception as exc:  # noqa: BLE001 - pyrad raises ValueError, struct.error, ...
        raise PacketError(f"invalid {attr.name} value ({len(raw)} octets): {exc}") from None
    return value


def _items(attributes: AttrList) -> Iterable[tuple[AttrKey, Any]]:
    if isinstance(attributes, Mapping):
        for key, value in attributes.items():
            if isinstance(value, list):
                for v in value:
                    yield key, v
            else:
                yield key, value
    else:
        yield from attributes


# ---- hiding -------------------------------------------------------------------------------------


def hide_password(password: str | bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password hiding (RFC 2865 §5.2), done by pyrad."""
    pkt = _pyrad.AuthPacket(id=0, secret=secret, authenticator=authenticator)
    return pkt.PwCrypt(password)


def recover_password(hidden: bytes, secret: bytes, authenticator: bytes) -> str:
    """Inverse of hide_password (pyrad; invalid UTF-8 is ignored). For servers and tests."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise PacketError(f"User-Password of {len(hidden)} octets")
    pkt = _pyrad.AuthPacket(id=0, secret=secret, authenticator=authenticator)
    return pkt.PwDecrypt(hidden)


def _md5(*parts: bytes) -> bytes:
    h = hashlib.md5()
    for p in parts:
        h.update(p)
    return h.digest()


def mppe_encrypt_key(key: bytes, secret: bytes, request_authenticator: bytes,
                     salt: bytes | None = None) -> bytes:
    """MS-MPPE-Send/Recv-Key value (RFC 2548 §2.4.2): Salt(2, MSB set) || encrypted(len||key||pad)."""
    if len(key) > 255:
        raise ValueError("MPPE key longer than 255 octets")
    if salt is None:
        salt = os.urandom(2)
    if len(salt) != 2:
        raise ValueError("MPPE salt must be 2 octets")
    salt = bytes([salt[0] | 0x80, salt[1]])
    plain = bytes([len(key)]) + key
    plain += bytes(-len(plain) % 16)
    out = bytearray()
    prev = request_authenticator + salt
    for i in range(0, len(plain), 16):
        b = _md5(secret, prev)
        block = bytes(x ^ y for x, y in zip(plain[i:i + 16], b))
        out += block
        prev = block
    return salt + bytes(out)


def mppe_decrypt_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """Key from an MS-MPPE-Send/Recv-Key value (RFC 2548 §2.4.2/§2.4.3); PacketError if malformed.

    `request_authenticator` is the Request Authenticator of the Access-Request being answered."""
    if len(value) < 18 or (len(value) - 2) % 16:
        raise PacketError(f"MPPE key attribute of {len(value)} octets")
    salt, cipher = value[:2], value[2:]
    plain = bytearray()
    prev = request_authenticator + salt
    for i in range(0, len(cipher), 16):
        block = cipher[i:i + 16]
        b = _md5(secret, prev)
        plain += bytes(x ^ y for x, y in zip(block, b))
        prev = block
    n = plain[0]
    if n > len(plain) - 1:
        raise PacketError(f"MPPE key length {n} exceeds the {len(plain) - 1} octets sent")
    return bytes(plain[1:1 + n])


# ---- encoding -------------------------------------------------------------------------------------


def _packet_class(code: int) -> type[_pyrad.Packet]:
    if code in (ACCESS_REQUEST, STATUS_SERVER):
        return _pyrad.AuthPacket
    if code == ACCOUNTING_REQUEST:
        return _pyrad.AcctPacket
    if code in (DISCONNECT_REQUEST, COA_REQUEST):
        return _pyrad.CoAPacket
    raise ValueError(f"not a request code: {code}")


def _add_all(pkt: _pyrad.Packet, attributes: AttrList, authenticator: bytes | None) -> None:
    for key, value in _items(attributes):
        wire, attr = resolve(key)
        if wire == MESSAGE_AUTHENTICATOR:
            raise ValueError("Message-Authenticator is computed, do not pass it")
        if isinstance(value, (bytes, bytearray, memoryview)):
            raws = [bytes(value)]
        elif attr is None:
            raise ValueError(f"attribute {key!r} is not in the dictionary: pass its value as bytes")
        elif attr.encrypt == 1:  # User-Password: hidden with this packet's authenticator + secret
            if authenticator is None:
                raise ValueError(f"{attr.name} needs a Request Authenticator (Access-Request only)")
            raws = [pkt.PwCrypt(value)]
        elif attr.encrypt:
            raise ValueError(f"{attr.name}: encrypted attributes are not supported in requests")
        else:
            raws = [encode_value(attr, value)]
        if wire == EAP_MESSAGE:
            raws = split_eap(b"".join(raws))
        limit = MAX_VALUE_LEN - 6 if isinstance(wire, tuple) else MAX_VALUE_LEN
        for raw in raws:
            if len(raw) > limit:
                raise ValueError(f"value of {key!r} is {len(raw)} octets (at most {limit})")
            # Straight into the OrderedDict under the wire key: pyrad encodes it unchanged.
            OrderedDict.setdefault(pkt, wire, []).append(raw)


def split_eap(message: bytes) -> list[bytes]:
    """An EAP packet as EAP-Message values of at most 253 octets, in order (RFC 3579 §3.1)."""
    if not message:
        return [b""]
    return [message[i:i + MAX_VALUE_LEN] for i in range(0, len(message), MAX_VALUE_LEN)]


def encode_request(code: int, identifier: int, secret: bytes, attributes: AttrList = (), *,
                   authenticator: bytes | None = None,
                   message_authenticator: bool | None = None) -> tuple[bytes, bytes]:
    """Encode a request; returns (datagram, Request Authenticator).

    Access-Request/Status-Server: `authenticator` is the random Request Authenticator (made here
    when None) and User-Password values are hidden with it. Accounting/CoA/Disconnect-Request: the
    authenticator is computed over the packet. Message-Authenticator (default: on for
    Access-Request/Status-Server, also whenever EAP-Message is present) is the first attribute."""
    if not 0 <= identifier <= 255:
        raise ValueError("identifier out of range")
    cls = _packet_class(code)
    random_auth = code in (ACCESS_REQUEST, STATUS_SERVER)
    if random_auth:
        authenticator = authenticator if authenticator is not None else os.urandom(16)
        if len(authenticator) != 16:
            raise ValueError("authenticator must be 16 octets")
    else:
        authenticator = None
    pkt = cls(code=code, id=identifier, secret=secret, authenticator=authenticator,
              dict=dictionary())
    if message_authenticator is None:
        message_authenticator = random_auth
    attrs = list(_items(attributes))
    if any(resolve(k)[0] == EAP_MESSAGE for k, _ in attrs):
        message_authenticator = True  # RFC 3579 §3.2
    if message_authenticator:
        pkt.add_message_authenticator()  # zero placeholder, first attribute; computed on encode
    else:
        pkt.message_authenticator = None
    _add_all(pkt, attrs, authenticator)
    raw = pkt.RequestPacket()
    if len(raw) > MAX_PACKET_LEN:
        raise ValueError(f"RADIUS packet of {len(raw)} octets (at most {MAX_PACKET_LEN})")
    return raw, raw[4:20]


def encode_reply(code: int, identifier: int, request_authenticator: bytes, secret: bytes,
                 attributes: AttrList = (), *, message_authenticator: bool = True) -> bytes:
    """Encode a reply (Access-Accept/Reject/Challenge, Accounting-Response, CoA/Disconnect-ACK/NAK)
    with its Response Authenticator; Message-Authenticator first when asked for. Used by the
    RFC 5176 server side and by test responders."""
    pkt = _pyrad.Packet(code=code, id=identifier, secret=secret,
                        authenticator=request_authenticator, dict=dictionary())
    if message_authenticator:
        pkt.add_message_authenticator()
    _add_all(pkt, attributes, None)
    raw = pkt.ReplyPacket()
    if len(raw) > MAX_PACKET_LEN:
        raise ValueError(f"RADIUS packet of {len(raw)} octets (at most {MAX_PACKET_LEN})")
    return raw


# ---- raw decoding -----------------------------------------------------------------------------------


def parse_header(data: bytes) -> tuple[int, int, int, bytes]:
    """(code, identifier, length, authenticator); PacketError unless 20 <= Length <= len(data)."""
    if len(data) < HEADER_LEN:
        raise PacketError(f"datagram of {len(data)} octets is shorter than a RADIUS header")
    code, identifier, length = struct.unpack_from("!BBH", data)
    if length < HEADER_LEN or length > MAX_PACKET_LEN:
        raise PacketError(f"invalid Length field {length}")
    if length > len(data):
        raise PacketError(f"Length field {length} exceeds the datagram ({len(data)} octets)")
    return code, identifier, length, bytes(data[4:20])


def split_attributes(body: bytes) -> list[tuple[int, bytes]]:
    """Top-level (type, value) pairs in order; PacketError if the lengths do not add up exactly."""
    out = []
    i, n = 0, len(body)
    while i < n:
        if n - i < 2:
            raise PacketError("truncated attribute header")
        atype, alen = body[i], body[i + 1]
        if alen < 2:
            raise PacketError(f"attribute {atype} with length {alen}")
        if i + alen > n:
            raise PacketError(f"attribute {atype} runs past the end of the packet")
        out.append((atype, bytes(body[i + 2:i + alen])))
        i += alen
    return out


def split_vendor(value: bytes) -> tuple[int, list[tuple[int, bytes]]] | None:
    """A Vendor-Specific value in the RFC 2865 format -> (vendor-id, [(type, value)]), else None."""
    if len(value) < 6:
        return None
    vendor = int.from_bytes(value[:4], "big")
    subs = []
    i, n = 4, len(value)
    while i < n:
        if n - i < 2:
            return None
        vtype, vlen = value[i], value[i + 1]
        if vlen < 2 or i + vlen > n:
            return None
        subs.append((vtype, bytes(value[i + 2:i + vlen])))
        i += vlen
    return vendor, subs


def _message_authenticator_offsets(body: bytes) -> list[int]:
    """Offsets (within body) of the values of all Message-Authenticator attributes."""
    offsets = []
    i = 0
    while i + 2 <= len(body):
        atype, alen = body[i], body[i + 1]
        if alen < 2:
            break
        if atype == MESSAGE_AUTHENTICATOR:
            offsets.append(i + 2)
        i += alen
    return offsets


def compute_message_authenticator(packet: bytes, secret: bytes, vector: bytes) -> bytes:
    """HMAC-MD5 over the packet with `vector` in the Authenticator field and the (single)
    Message-Authenticator value zeroed (RFC 2869 §5.14, RFC 3579 §3.2, RFC 5176 §3.3)."""
    body = bytearray(packet[HEADER_LEN:])
    for off in _message_authenticator_offsets(bytes(body)):
        body[off:off + 16] = bytes(16)
    return hmac.new(secret, bytes(packet[:4]) + vector + bytes(body), "md5").digest()


def _check_message_authenticator(packet: bytes, secret: bytes, vectors: tuple[bytes, ...],
                                 required: bool) -> str | None:
    attrs = split_attributes(packet[HEADER_LEN:])
    mas = [v for t, v in attrs if t == MESSAGE_AUTHENTICATOR]
    if not mas:
        return "missing Message-Authenticator" if required else None
    if len(mas) > 1:
        return "more than one Message-Authenticator"
    if len(mas[0]) != 16:
        return f"Message-Authenticator of {len(mas[0])} octets"
    for vector in vectors:
        if hmac.compare_digest(mas[0], compute_message_authenticator(packet, secret, vector)):
            return None
    return "bad Message-Authenticator"


def verify_reply(data: bytes, *, request_code: int, identifier: int, request_authenticator: bytes,
                 secret: bytes, require_message_authenticator: bool = True,
                 proxy_state: Iterable[bytes] = ()) -> str | None:
    """Why a datagram is not a valid reply to the request, or None if it is.

    Checks framing, identifier, code, Response Authenticator (RFC 2865 §3), Message-Authenticator
    (required by default for replies to Access-Request and Status-Server; always verified when
    present) and that the reply carries no Proxy-State the request did not (BlastRADIUS)."""
    try:
        code, ident, length, response_auth = parse_header(data)
        packet = bytes(data[:length])
        attrs = split_attributes(packet[HEADER_LEN:])
    except PacketError as exc:
        return f"malformed: {exc}"
    if ident != identifier:
        return "identifier mismatch"
    if code not in REPLY_CODES.get(request_code, ()):
        return f"unexpected code {code} for {CODE_NAMES.get(request_code, request_code)}"
    expected = _md5(packet[:4], request_authenticator, packet[HEADER_LEN:], secret)
    if not hmac.compare_digest(expected, response_auth):
        return "bad Response Authenticator"
    if request_code == ACCOUNTING_REQUEST:
        # FreeRADIUS and pyrad sign Accounting-Responses with a zero vector; RFC 2869 is silent.
        vectors: tuple[bytes, ...] = (ZERO_AUTHENTICATOR, request_authenticator)
        required = False
    else:
        vectors = (request_authenticator,)
        required = require_message_authenticator and request_code in (ACCESS_REQUEST, STATUS_SERVER)
    reason = _check_message_authenticator(packet, secret, vectors, required)
    if reason:
        return reason
    sent = list(proxy_state)
    got = [v for t, v in attrs if t == PROXY_STATE]
    if got != sent[:len(got)]:
        return "unexpected Proxy-State"
    return None


def verify_request(data: bytes, secret: bytes, *,
                   require_message_authenticator: bool = True) -> str | None:
    """Why an Accounting-, Disconnect- or CoA-Request is not authentic, or None.

    Request Authenticator = MD5(Code|ID|Length|16 zero octets|Attributes|Secret) (RFC 2866 §3,
    RFC 5176 §3.5); Message-Authenticator computed with a zero vector, required by default."""
    try:
        code, _ident, length, authenticator = parse_header(data)
        packet = bytes(data[:length])
        split_attributes(packet[HEADER_LEN:])
    except PacketError as exc:
        return f"malformed: {exc}"
    if code not in (ACCOUNTING_REQUEST, DISCONNECT_REQUEST, COA_REQUEST):
        return f"unexpected code {code}"
    expected = _md5(packet[:4], ZERO_AUTHENTICATOR, packet[HEADER_LEN:], secret)
    if not hmac.compare_digest(expected, authenticator):
        return "bad Request Authenticator"
    return _check_message_authenticator(packet, secret, (ZERO_AUTHENTICATOR,),
                                        require_message_authenticator)


# ---- decoded packets ------------------------------------------------------------------------------


class RadiusPacket:
    """A received packet: header, attributes in order, values by name/code/(vendor, type).

    `secret` and, for a reply, the `request_authenticator` of the request are kept so that hidden
    values (User-Password, MS-MPPE keys) can be revealed by get()."""

    __slots__ = (
        "_index",
        "attributes",
        "authenticator",
        "code",
        "identifier",
        "raw",
        "request_authenticator",
        "secret",
    )

    def __init__(self, code: int, identifier: int, authenticator: bytes, raw: bytes,
                 attributes: list[tuple[int, bytes]], *, secret: bytes = b"",
                 request_authenticator: bytes | None = None) -> None:
        self.code = code
        self.identifier = identifier
        self.authenticator = authenticator
        self.raw = raw
        self.attributes = attributes  # top-level (type, value), as received
        self.secret = secret
        self.request_authenticator = request_authenticator
        index: dict[int | tuple[int, int], list[bytes]] = {}
        for atype, value in attributes:
            index.setdefault(atype, []).append(value)
            if atype == VENDOR_SPECIFIC:
                vsa = split_vendor(value)
                if vsa is not None:
                    vendor, subs = vsa
                    for vtype, vvalue in subs:
                        index.setdefault((vendor, vtype), []).append(vvalue)
        self._index = index

    @classmethod
    def decode(cls, data: bytes, *, secret: bytes = b"",
               request_authenticator: bytes | None = None) -> RadiusPacket:
        code, identifier, length, authenticator = parse_header(data)
        packet = bytes(data[:length])  # octets past Length are padding (RFC 2865 §3)
        return cls(code, identifier, authenticator, packet, split_attributes(packet[HEADER_LEN:]),
                   secret=secret, request_authenticator=request_authenticator)

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, str(self.code))

    def values(self, key: AttrKey) -> list[bytes]:
        """Raw values of an attribute, in order ([] if absent)."""
        return list(self._index.get(resolve(key)[0], ()))

    def integer(self, atype: int) -> int | None:
        """The first value of a 32-bit integer attribute (None if absent; PacketError if not 4 octets)."""
        values = self._index.get(atype)
        if not values:
            return None
        if len(values[0]) != 4:
            raise PacketError(f"{attribute_name(atype)} of {len(values[0])} octets")
        return int.from_bytes(values[0], "big")

    def vendor(self, vendor_id: int, vendor_type: int) -> list[bytes]:
        """Raw values of a vendor-specific attribute, in order."""
        return list(self._index.get((vendor_id, vendor_type), ()))

    def __contains__(self, key: AttrKey) -> bool:
        return resolve(key)[0] in self._index

    def get(self, key: AttrKey) -> list[Any]:
        """Decoded values by the dictionary type; raw bytes for attributes it does not know.
        User-Password and MS-MPPE keys are revealed. PacketError for an undecodable value."""
        wire, attr = resolve(key)
        raws = self._index.get(wire, ())
        if attr is None:
            return list(raws)
        out = []
        for raw in raws:
            if attr.encrypt == 1:
                out.append(recover_password(raw, self.secret, self.authenticator))
            elif attr.encrypt == 2:
                out.append(mppe_decrypt_key(raw, self.secret,
                                            self.request_authenticator or ZERO_AUTHENTICATOR))
            else:
                out.append(decode_value(attr, raw))
        return out

    def first(self, key: AttrKey, default: Any = None) -> Any:
        values = self.get(key)
        return values[0] if values else default

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) for every attribute and vendor sub-attribute, for logs and debugging.
        Hidden values stay hidden (shown as <hidden>); undecodable ones as their hex."""
        out: list[tuple[str, Any]] = []
        for atype, raw in self.attributes:
            vsa = split_vendor(raw) if atype == VENDOR_SPECIFIC else None
            entries = ([((vsa[0], t), v) for t, v in vsa[1]] if vsa else [(atype, raw)])
            for wire, value in entries:
                name = attribute_name(wire)
                label = name or (f"Vendor-{wire[0]}-Attr-{wire[1]}" if isinstance(wire, tuple)
                                 else f"Attr-{wire}")
                attr = dictionary().attributes.get(name) if name else None
                if attr is None:
                    out.append((label, value.hex()))
                elif attr.encrypt or wire == MESSAGE_AUTHENTICATOR:
                    out.append((label, "<hidden>"))
                else:
                    try:
                        out.append((label, decode_value(attr, value)))
                    except PacketError:
                        out.append((label, value.hex()))
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.code_name} id={self.identifier} {self.items()!r}>"


class RadiusReply(RadiusPacket):
    """A verified reply, with accessors for what the gateway uses."""

    __slots__ = ()

    @property
    def accepted(self) -> bool:
        return self.code == ACCESS_ACCEPT

    @property
    def rejected(self) -> bool:
        return self.code == ACCESS_REJECT

    @property
    def challenged(self) -> bool:
        return self.code == ACCESS_CHALLENGE

    @property
    def reply_messages(self) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self._index.get(REPLY_MESSAGE, ())]

    @property
    def reply_message(self) -> str:
        """All Reply-Message values joined, in order (RFC 2865 §5.18), "" if none."""
        return "\n".join(self.reply_messages)

    @property
    def state(self) -> bytes | None:
        values = self._index.get(STATE)
        return values[0] if values else None

    @property
    def class_values(self) -> list[bytes]:
        """Every Class, unchanged and in order: echo all of them in accounting (RFC 2865 §5.25)."""
        return list(self._index.get(CLASS, ()))

    @property
    def framed_ip(self) -> ipaddress.IPv4Address | None:
        """Framed-IP-Address; None if absent or one of the "NAS chooses" values (0xFFFFFFFE,
        0xFFFFFFFF)."""
        values = self._index.get(FRAMED_IP_ADDRESS)
        if not values:
            return None
        if len(values[0]) != 4:
            raise PacketError(f"Framed-IP-Address of {len(values[0])} octets")
        if values[0] in (b"\xff\xff\xff\xfe", b"\xff\xff\xff\xff"):
            return None
        return ipaddress.IPv4Address(values[0])

    @property
    def session_timeout(self) -> int | None:
        return self.integer(SESSION_TIMEOUT)

    @property
    def idle_timeout(self) -> int | None:
        return self.integer(IDLE_TIMEOUT)

    @property
    def acct_interim_interval(self) -> int | None:
        return self.integer(ACCT_INTERIM_INTERVAL)

    @property
    def eap_message(self) -> bytes | None:
        """The EAP packet: all EAP-Message values concatenated (RFC 3579 §3.1), None if none."""
        values = self._index.get(EAP_MESSAGE)
        return b"".join(values) if values else None

    def _mppe(self, key: tuple[int, int]) -> bytes | None:
        values = self._index.get(key)
        if not values:
            return None
        if self.request_authenticator is None:
            raise PacketError("MPPE key in a packet without the request's authenticator")
        return mppe_decrypt_key(values[0], self.secret, self.request_authenticator)

    @property
    def mppe_send_key(self) -> bytes | None:
        """MS-MPPE-Send-Key, decrypted: the key the NAS (we) send with. PacketError if malformed."""
        return self._mppe(MS_MPPE_SEND_KEY)

    @property
    def mppe_recv_key(self) -> bytes | None:
        """MS-MPPE-Recv-Key, decrypted: the key the NAS (we) receive with."""
        return self._mppe(MS_MPPE_RECV_KEY)

    @property
    def msk(self) -> bytes | None:
        """EAP MSK as strongSwan builds it: Recv-Key || Send-Key, zero-padded to 64 octets."""
        recv, send = self.mppe_recv_key, self.mppe_send_key
        if recv is None or send is None:
            return None
        return (recv + send).ljust(64, b"\0")

    @property
    def ms_chap2_success(self) -> bytes | None:
        """MS-CHAP2-Success value: Ident(1) || "S=<40 hex>" (see mschap.parse_ms_chap2_success)."""
        values = self._index.get(MS_CHAP2_SUCCESS)
        return values[0] if values else None

    @property
    def ms_chap_error(self) -> bytes | None:
        """MS-CHAP-Error value: Ident(1) || "E=691 R=0 C=... V=3 M=..." (mschap.parse_ms_chap_error)."""
        values = self._index.get(MS_CHAP_ERROR)
        return values[0] if values else None

    def group_values(self, spec: str) -> list[bytes]:
        """Values of the attribute a policy-group spec names: "Class" (or any dictionary name) or
        "vendor:<vendor-id>:<type>" (RadiusSettings.group_attribute)."""
        if spec.startswith("vendor:"):
            try:
                _, vid, vtype = spec.split(":")
                return self.vendor(int(vid), int(vtype))
            except ValueError:
                raise ValueError(f"bad group attribute spec {spec!r}") from None
        return self.values(spec)
