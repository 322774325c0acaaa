"""Gateway configuration: one TOML file (`p2sgw.toml`) in the state directory.

Names follow the cloud point-to-site gateway operators already know: address pools,
routes, auth types, trusted root certificates and revoked certificates (by SHA-1 thumbprint).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, field_validator

CONFIG_NAME = "p2sgw.toml"
DEFAULT_STATE_DIR = "/var/lib/p2sgw"
STATE_DIR_ENV = "P2SGW_STATE_DIR"
MAX_TRUSTED_ROOTS = 20

AuthType = Literal["certificate", "radius", "oidc"]
ENTRA_VPN_AUDIENCE = "c632b3df-fb67-4d84-bdcf-b95ad541b5c8"  # the Microsoft-registered VPN client app
Cipher = Literal["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenVPNSettings(_Model):
    enabled: bool = True
    listen: str = "0.0.0.0"
    udp_port: int = Field(1194, ge=0, le=65535)  # 0 = disabled
    tcp_port: int = Field(443, ge=0, le=65535)  # 0 = disabled
    tls_wrap: Literal["tls-crypt", "tls-auth"] = "tls-crypt"
    # Server preference order; the first one the client lists in IV_CIPHERS wins.
    ciphers: list[Cipher] = ["AES-256-GCM", "CHACHA20-POLY1305", "AES-128-GCM"]
    reneg_sec: int = 3600
    keepalive_interval: int = 10
    keepalive_timeout: int = 60
    hand_window: int = 60
    tls_timeout: float = 2.0
    transition_window: int = 3600
    tun_name: str = "p2sgw0"
    tun_mtu: int = 1500
    max_handshakes_per_second: int = 200
    # Password/SSO sign-ins get a session token: renegotiations and reconnects within this many
    # seconds of the real sign-in do not ask RADIUS (and the user's phone) again.
    auth_token_lifetime: int = Field(43200, ge=60)


class RadiusServer(_Model):
    """One RADIUS server; servers are asked in list order (the first is the primary)."""

    address: str
    port: int = Field(1812, ge=1, le=65535)
    accounting_port: int = Field(1813, ge=1, le=65535)
    secret: str = ""  # empty: RadiusSettings.secret


class DynamicAuthorization(_Model):
    """RFC 5176 Disconnect-Request / CoA-Request server (the gateway listens, the RADIUS side asks)."""

    enabled: bool = False
    listen: str = "0.0.0.0"
    port: int = Field(3799, ge=1, le=65535)
    secret: str = ""
    allowed_clients: list[str] = Field(default_factory=list)  # IPs or CIDRs; empty = the RADIUS servers


class RadiusSettings(_Model):
    servers: list[RadiusServer] = Field(default_factory=list)
    secret: str = ""  # shared secret for servers that have none of their own
    # Total wait for one server before failing over; up to 300 s so push-MFA approvals fit.
    timeout: float = Field(30.0, gt=0, le=300)
    retries: int = Field(2, ge=0, le=10)  # retransmissions to the same server within `timeout`
    dead_time: float = Field(60.0, ge=0)  # a server that did not answer is skipped this long
    nas_identifier: str = "p2sgw"
    nas_ip_address: str | None = None
    accounting: bool = True
    interim_interval: int = Field(300, ge=0)  # seconds; 0 = no Interim-Update
    # Which reply attribute picks a policy group: "Class" or "vendor:<vendor-id>:<type>"
    group_attribute: str = "Class"
    dynamic_authorization: DynamicAuthorization = Field(default_factory=DynamicAuthorization)


class PolicyGroup(_Model):
    """Users matched to a group get its address pools (and routes/DNS when set)."""

    name: str
    priority: int = 100  # lower number wins when a user matches several groups
    default: bool = False
    address_pools: list[str]
    routes: list[str] | None = None  # None: the gateway-wide routes
    dns_servers: list[str] | None = None
    radius_values: list[str] = Field(default_factory=list)  # values of RadiusSettings.group_attribute
    certificate_domains: list[str] = Field(default_factory=list)  # CN suffixes like "@example.com"
    oidc_groups: list[str] = Field(default_factory=list)


class OidcSettings(_Model):
    """Sign-in with Microsoft Entra ID or any OpenID Connect provider (OpenVPN WEB_AUTH).

    The gateway is a relying party: authorization code flow with PKCE, state and nonce; the
    redirect URI is https://PUBLIC_ADDRESS/oidc/callback."""

    issuer: str = ""  # https URL; discovery at ISSUER/.well-known/openid-configuration
    client_id: str = ""
    client_secret: str | None = None  # absent: public client (PKCE only)
    audience: str | None = None  # expected `aud`; default: client_id
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    allowed_groups: list[str] = Field(default_factory=list)  # empty: every user of the provider
    group_claim: str = "groups"
    username_claim: str = "preferred_username"  # falls back to upn, email, sub
    required_amr: list[str] = Field(default_factory=list)  # e.g. ["mfa"]: all must be in the token's amr
    tenant_id: str | None = None  # Entra: `tid` must match; also the default issuer
    ca_file: str | None = None  # PEM bundle for providers with a private CA (default: system trust)
    leeway: int = Field(60, ge=0, le=300)  # seconds of clock skew allowed for exp/nbf/iat
    sign_in_timeout: int = Field(300, ge=30, le=1800)  # how long a client waits for the browser sign-in

    def effective_issuer(self) -> str:
        if self.issuer:
            return self.issuer
        if self.tenant_id:
            return f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"
        return ""

    def accepted_issuers(self) -> list[str]:
        """The configured issuer; for Entra tenants also the v1 form of the same tenant."""
        issuers = [self.effective_issuer()]
        if self.tenant_id:
            for form in (f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
                         f"https://sts.windows.net/{self.tenant_id}/"):
                if form not in issuers:
                    issuers.append(form)
        return issuers

    @field_validator("issuer")
    @classmethod
    def _https(cls, value: str) -> str:
        if value and not value.startswith("https://"):
            raise ValueError("the OIDC issuer must be an https:// URL")
        return value  # kept exactly: it must equal the tokens' `iss`


class WebSettings(_Model):
    """The gateway's HTTPS endpoint (sign-in pages, later API and portal)."""

    enabled: bool = True
    share_openvpn_tcp_port: bool = True  # one TCP port for OpenVPN and HTTPS, told apart by the first bytes
    port: int = Field(0, ge=0, le=65535)  # an extra HTTPS-only port; 0 = none
    # A certificate browsers trust (e.g. from a public CA); default: the gateway's server certificate
    certificate_file: str | None = None  # PEM, chain included
    key_file: str | None = None


class TrustedRoot(_Model):
    """A root CA whose client certificates are accepted (PEM stored inline)."""

    name: str
    public_cert_data: str  # PEM
    thumbprint: str  # SHA-1 hex, upper case


class RevokedCertificate(_Model):
    name: str
    thumbprint: str  # SHA-1 hex of the client certificate, upper case


class GatewayConfig(_Model):
    public_address: str
    vpn_client_address_pool: list[str]
    routes: list[str] = Field(default_factory=list)
    dns_servers: list[str] = Field(default_factory=list)
    vpn_auth_types: list[AuthType] = ["certificate"]
    # With certificate and RADIUS both enabled: "any" = either suffices, "all" = both are required
    auth_combination: Literal["any", "all"] = "any"
    vpn_client_root_certificates: list[TrustedRoot] = Field(default_factory=list)
    vpn_client_revoked_certificates: list[RevokedCertificate] = Field(default_factory=list)
    database_url: str = ""  # empty: SQLite file in the state directory
    # Data-plane worker processes for UDP sessions (dataplane/): -1 = one per CPU core, 0 = none
    # (the control process moves every packet itself)
    data_workers: int = Field(-1, ge=-1, le=64)
    log_level: str = "info"
    openvpn: OpenVPNSettings = Field(default_factory=OpenVPNSettings)
    radius: RadiusSettings = Field(default_factory=RadiusSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    policy_groups: list[PolicyGroup] = Field(default_factory=list)

    @field_validator("vpn_client_address_pool", "routes")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=False)) for v in value]

    @field_validator("dns_servers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in value]

    @field_validator("vpn_client_root_certificates")
    @classmethod
    def _root_limit(cls, value: list[TrustedRoot]) -> list[TrustedRoot]:
        if len(value) > MAX_TRUSTED_ROOTS:
            raise ValueError(f"at most {MAX_TRUSTED_ROOTS} trusted root certificates")
        return value

    def web_base_url(self) -> str:
        """Where browsers reach the gateway: the public address on the shared OpenVPN TCP port (or the web port)."""
        port = self.openvpn.tcp_port if self.web.share_openvpn_tcp_port and self.openvpn.tcp_port else self.web.port
        host = f"[{self.public_address}]" if ":" in self.public_address else self.public_address
        return f"https://{host}" + ("" if port in (443, 0) else f":{port}")

    def oidc_redirect_uri(self) -> str:
        """Register this at the identity provider (Entra: a "Web" platform redirect URI)."""
        return self.web_base_url() + "/oidc/callback"

    def revoked_thumbprints(self) -> set[str]:
        return {r.thumbprint.upper() for r in self.vpn_client_revoked_certificates}


def resolve_state_dir(value: str | os.PathLike | None = None) -> Path:
    return Path(value or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def load_config(state_dir: Path) -> GatewayConfig:
    path = state_dir / CONFIG_NAME
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run 'p2sgw init' first") from None
    return GatewayConfig.model_validate(data)


def save_config(state_dir: Path, config: GatewayConfig) -> None:
    """Write atomically so a running gateway never reads half a file."""
    path = state_dir / CONFIG_NAME
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    os.replace(tmp, path)
