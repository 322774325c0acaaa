"""Client profiles with everything inline, so one file is all a user needs.

The .ovpn works with stock `openvpn --config FILE` (2.4+) and OpenVPN Connect. Each transport is its own
<connection> block because `explicit-exit-notify` is only valid over UDP: the UDP block tells the gateway
at once when the client quits, the TCP block (tried next) relies on the connection closing.
"""

from __future__ import annotations

from p2sgw.config import GatewayConfig
from p2sgw.pki import IssuedCert, Pki

# UDP gives no connect error when blocked: move on to the next <connection> after this many seconds.
SERVER_POLL_TIMEOUT = 10


def openvpn_profile(config: GatewayConfig, pki: Pki, client: IssuedCert | tuple[str, str] | None) -> str:
    """A certificate profile for `client`, or (client None) a username/password profile without a key."""
    if isinstance(client, IssuedCert):
        name, cert_pem, key_pem = client.name, client.cert_pem, client.key_pem
    elif client is None:
        name = cert_pem = key_pem = None
    else:
        name, (cert_pem, key_pem) = None, client
    settings = config.openvpn
    host = config.public_address
    connections = []
    if settings.udp_port:
        connections.append(
            f"<connection>\nremote {host} {settings.udp_port} udp\nexplicit-exit-notify 1\n</connection>"
        )
    if settings.tcp_port:
        connections.append(f"<connection>\nremote {host} {settings.tcp_port} tcp\n</connection>")
    if not connections:
        raise ValueError("OpenVPN has neither a UDP nor a TCP port configured")

    if settings.tls_wrap == "tls-auth":
        tls_wrap = ["key-direction 1", _inline("tls-auth", pki.tls_crypt_key_text())]
    else:
        tls_wrap = [_inline("tls-crypt", pki.tls_crypt_key_text())]

    title = f"p2sgw OpenVPN profile for {name} at {host}" if name else f"p2sgw OpenVPN profile for {host}"
    lines = [
        f"# {title}",
        "client",
        "dev tun",
        f"server-poll-timeout {SERVER_POLL_TIMEOUT}",
        "resolv-retry infinite",
        "nobind",
        "persist-key",
        "persist-tun",
        "remote-cert-tls server",
        "tls-version-min 1.2",
        f"data-ciphers {':'.join(settings.ciphers)}",
        "verb 3",
        _inline("ca", pki.ca_pem()),
        *([_inline("cert", cert_pem), _inline("key", key_pem)] if cert_pem and key_pem else []),
        *_sign_in(config, with_certificate=bool(cert_pem)),
        *tls_wrap,
        # Last: options placed after a <connection> block do not apply to it.
        *connections,
    ]
    return "\n".join(lines) + "\n"


def _sign_in(config: GatewayConfig, with_certificate: bool) -> list[str]:
    """How the client proves who it is besides (or instead of) its certificate."""
    types = config.vpn_auth_types
    if "oidc" in types and not with_certificate:
        # Browser sign-in (WEB_AUTH): the client announces it can open a URL; openvpn 2.6 insists on
        # some credential, so it sends placeholders the gateway ignores (then the pushed auth-token).
        return ["setenv IV_SSO webauth,openurl,crtext", "auth-retry interact", _inline("auth-user-pass", "sso\nsso")]
    if "radius" in types and not (with_certificate and config.auth_combination == "any"):
        # the client asks for a username and password: a prompt, or its GUI's dialog
        return ["auth-user-pass", "auth-retry interact"]
    return []


def _inline(tag: str, body: str) -> str:
    return f"<{tag}>\n{body.strip()}\n</{tag}>"
