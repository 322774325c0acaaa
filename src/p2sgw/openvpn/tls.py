"""TLS over OpenVPN's reliable transport, through OpenSSL memory BIOs (pyOpenSSL).

CPython's ssl module has no keying-material exporter, which TLS-EKM key derivation needs;
pyOpenSSL wraps SSL_export_keying_material. No sockets here: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi  # pyOpenSSL's own binding: BIO_s_mem, SSL_set_bio
from OpenSSL._util import lib as _lib

READ_CHUNK = 16384


@dataclass(slots=True)
class VerifyResult:
    """First certificate-chain error OpenSSL reported (None = chain verified)."""

    error: str | None = None
    depth: int = 0
    subject: str = ""
    errors: list[str] = field(default_factory=list)


def build_server_context(
    server_cert: x509.Certificate,
    server_key: PrivateKeyTypes,
    chain: list[x509.Certificate],
    trusted_roots: list[x509.Certificate],
    require_client_certificate: bool = True,
) -> SSL.Context:
    """TLS ≥ 1.2 server context; a client certificate, when sent (or required), must chain to one of
    `trusted_roots`."""
    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if require_client_certificate else 0)
    ctx = new_context(SSL.TLS_SERVER_METHOD, server_cert, server_key, chain, trusted_roots, mode)
    # an idle session keeps its TLS connection for its whole life: don't keep 2 × 16 KiB of buffers with it
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def new_context(
    method: int,
    cert: x509.Certificate,
    key: PrivateKeyTypes,
    chain: Iterable[x509.Certificate],
    trusted_roots: Iterable[x509.Certificate],
    verify_mode: int,
) -> SSL.Context:
    """What the server and the client side (openvpn/client.py) share: TLS ≥ 1.2, no tickets,
    compression or renegotiation, our certificate, and a peer chain checked against
    `trusted_roots`, with the first failure recorded in the connection's VerifyResult."""
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    for extra in chain:
        ctx.add_extra_chain_cert(extra)
    store = ctx.get_cert_store()
    assert store is not None
    for root in trusted_roots:
        store.add_cert(crypto.X509.from_cryptography(root))
    ctx.set_verify(verify_mode, _record_verify_error)
    return ctx


def _record_verify_error(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    result: VerifyResult = conn.get_app_data()
    if not ok:
        text = _verify_error_string(errnum)
        result.errors.append(text)
        if result.error is None:
            result.error, result.depth = text, depth
            result.subject = cert.to_cryptography().subject.rfc4514_string()
    return bool(ok)


def set_groups(ctx: SSL.Context, groups: str) -> None:
    """Key-exchange groups a context offers or accepts, in OpenSSL's list syntax ("X25519:P-256")."""
    if _lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode()) != 1:
        raise ValueError(f"unknown TLS group in {groups!r}")


def _verify_error_string(errnum: int) -> str:
    return _ffi.string(_lib.X509_verify_cert_error_string(errnum)).decode()


class TlsEndpoint:
    """One TLS session (one per OpenVPN key state); the gateway's side, or a client's (load generator)."""

    def __init__(self, context: SSL.Context, server: bool = True) -> None:
        self.verify = VerifyResult()
        self._conn = SSL.Connection(context, None)
        self._conn.set_app_data(self.verify)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self.established = False
        self.failed: str | None = None
        self._bios_renewed = False

    def start(self) -> None:
        """Client side: produce the ClientHello (read it with records_to_send())."""
        try:
            self._conn.do_handshake()
            self.established = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self.failed = self.verify.error or _ssl_error_text(exc)

    @property
    def alive(self) -> bool:
        return self._conn is not None

    def free(self) -> None:
        """Drop the OpenSSL connection (a retired key state keeps only its data key)."""
        self._conn = None  # type: ignore[assignment]

    def receive_records(self, data: bytes) -> bytes:
        """Feed TLS records from the peer; return application plaintext now available."""
        self._conn.bio_write(data)
        if not self.established:
            try:
                self._conn.do_handshake()
                self.established = True
            except SSL.WantReadError:
                return b""
            except SSL.Error as exc:
                self.failed = self.verify.error or _ssl_error_text(exc)
                return b""
        out = bytearray()
        while True:
            try:
                chunk = self._conn.recv(READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                break
            except SSL.Error as exc:
                self.failed = _ssl_error_text(exc)
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def send(self, plaintext: bytes) -> None:
        self._conn.sendall(plaintext)

    def records_to_send(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self._conn.bio_read(READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        if self.established and not self._bios_renewed:
            self._renew_bios()
        return bytes(out)

    def _renew_bios(self) -> None:
        """After the handshake, give OpenSSL fresh memory BIOs once both are drained: a memory BIO
        keeps the capacity of the largest flight it carried (certificates), about 5 KiB per session
        that an idle tunnel never needs again. Done through pyOpenSSL's binding of SSL_set_bio."""
        conn = self._conn
        into, out = getattr(conn, "_into_ssl", None), getattr(conn, "_from_ssl", None)
        if into is None or out is None:
            self._bios_renewed = True  # not a memory-BIO connection (or a pyOpenSSL without them)
            return
        if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
            return  # bytes still in flight: next time
        new_into, new_out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
        if new_into == _ffi.NULL or new_out == _ffi.NULL:
            for bio in (new_into, new_out):
                if bio != _ffi.NULL:
                    _lib.BIO_free(bio)
            return
        _lib.SSL_set_bio(conn._ssl, new_into, new_out)  # frees the old pair
        conn._into_ssl, conn._from_ssl = new_into, new_out
        self._bios_renewed = True

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return self._conn.export_keying_material(label, length)

    def peer_chain(self) -> list[x509.Certificate]:
        """Leaf first (server-side OpenSSL leaves the leaf out of the peer chain)."""
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return []
        rest = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        return [leaf] + [c for c in rest if c != leaf]

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str:
        return self._conn.get_cipher_name() or ""

    @property
    def group(self) -> str:
        """The key exchange's group (e.g. "x25519", "X25519MLKEM768"); "" when unknown."""
        if not getattr(_lib, "Cryptography_HAS_SSL_GET0_GROUP_NAME", False):
            return ""
        name = _lib.SSL_get0_group_name(self._conn._ssl)
        return _ffi.string(name).decode() if name != _ffi.NULL else ""


def _ssl_error_text(exc: SSL.Error) -> str:
    try:
        return "; ".join(str(part[2]) for part in exc.args[0]) or "TLS error"
    except (IndexError, TypeError):
        return str(exc) or "TLS error"
