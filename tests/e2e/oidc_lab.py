"""A real OpenID Connect provider and a real browser in the lab, for the OIDC / WEB_AUTH sign-in tests.

The provider is npm `oidc-provider` 9 (tests/e2e/idp/idp.mjs, installed by `npm ci --prefix tests/e2e/idp`)
on Node, over HTTPS with a test CA made here, with its own login pages (username + password, then a TOTP code
for users that have a secret; a Cancel button) instead of devInteractions, which accepts any password.
The browser is Debian's Chromium driven by Playwright for Python (tests/e2e/idp/browser_login.py), run
inside a client namespace.

Topology: the IdP gets its own namespace "idp" (created here, removed by `lab.close()` like the lab's own)
attached to the client bridge br0 as 192.0.2.2, a host "on the internet" next to the clients:

    c0 192.0.2.10 ─┐
    idp 192.0.2.2 ─┤ br0 192.0.2.1 [gw] 10.1.0.1 ── 10.1.0.10 [vnet]

so the browser in c0 reaches https://192.0.2.2 (the IdP) and https://192.0.2.1 (the gateway) before any
tunnel is up, and the gateway reaches the IdP on its client-side segment for discovery, JWKS and the token
exchange (no route needed: same /24). The VNet host does not reach the IdP.

    idp = OidcProvider(lab, client_id="p2sgw", redirect_uris=["https://192.0.2.1/oidc/callback"]).start()
    idp.issuer            # "https://192.0.2.2"  (discovery at issuer + /.well-known/openid-configuration)
    idp.ca_cert_path      # PEM of the test CA: the gateway's --oidc-ca-file
    result = idp.browser_login("c0", web_auth_url, "alice", "alice-pass")   # trusts idp's CA
    result = browser_login(lab, "c0", url, "carol", "carol-pass", totp_secret=CAROL_TOTP_SECRET,
                           ca_files=[idp.ca_cert_path], ignore_https_errors=True)   # gateway's own cert
    idp.stop(); idp.start()   # IdP down / back (same issuer, CA, keys and users)
    idp.silence()             # TCP to the IdP is dropped: it hangs instead of refusing (unsilence())
    idp.rotate_signing_key()  # new signing key first in the JWKS, old one kept (keep_old=False drops it)
    idp.log_text()            # the provider's log: one line per request and per sign-in decision

API
- `OidcProvider(lab, client_id="p2sgw", redirect_uris=None, users=None, client_secret=None, id_token_ttl=300,
  *, address="192.0.2.2", port=443, ns="idp", token_endpoint_auth_method=None, extra_claims=None,
  extra_clients=(), access_token_ttl=300, code_ttl=60, name="idp")`
  redirect_uris default to [DEFAULT_REDIRECT_URI] (https://192.0.2.1/oidc/callback); users default to
  `default_users()`. No client_secret: a public client (token_endpoint_auth_method "none"); with one:
  "client_secret_basic" unless given ("client_secret_post" also works). PKCE (S256) is required for every
  client. `extra_claims` (e.g. {"tid": "..."}) are added to every user's ID token. `extra_clients` are more
  `OidcClient`s. Methods: `.start()`, `.stop()`, `.running`, context manager, `.issuer`, `.ca_cert_path`,
  `.ca` (the `TestCA`, to issue more certificates, e.g. for the gateway), `.jwks()` (public keys, as served),
  `.signing_kid`, `.rotate_signing_key(keep_old=True)` (restarts the provider: codes and IdP sessions in
  flight are lost), `.set_users(users)` (rewrites the users file; read on every login, no restart), `.log_path`,
  `.log_mark()`, `.log_text(since=None)`, `.wait_for_log(needle, since=None)`, `.silence()` / `.unsilence()`,
  `.browser_login(ns, url, username, password, **kwargs)`, `.http(ns, method, path_or_url, **kwargs)`.
- `browser_login(lab, ns, url, username, password, totp_secret=None, cancel=False, timeout=60, *, ca_files=(),
  ignore_https_errors=False, totp_code=None, wait_text=None, screenshot=None) -> dict`: the JSON of
  browser_login.py (ok, outcome, steps, idp_error, final_url, title, text, status, navigations, error,
  elapsed). cancel: True/"login" presses Cancel on the login page, "otp" on the code page.
- `lab_http(lab, ns, method, url, *, data=None, headers=None, auth=None, verify=None, follow_redirects=False,
  timeout=10) -> dict` (status, headers, text, json, url, error): one httpx request made from inside a lab
  namespace (the test process itself lives in the root namespace and reaches none of the lab's addresses).
  verify: a CA file path, or False. Never raises for network errors: see "error".
- `CallbackRecorder(lab, ca, ns="c0", port=8443).start()`: a tiny HTTPS server in a client namespace standing
  in for a relying party's redirect URI; `.url` (https://192.0.2.10:8443/callback), `.requests()` (one dict
  per request to the callback path: path, query {name: value}; other paths get 404), `.wait_for_request(timeout)`.
- `pkce_pair() -> (verifier, challenge)`, `authorization_url(auth_endpoint, client_id, redirect_uri, *,
  state, nonce, code_challenge, scope="openid profile email")`.
- `TestCA(directory)`: an EC P-256 CA (ca.pem); `.issue(name, ips=(), dns=()) -> (cert_path, key_path)`.

Users (`default_users()`; the file is JSON, written to the provider's directory):
    alice / alice-pass   groups ["vpn-users", "engineering"]   amr ["pwd"]
    bob   / bob-pass     groups ["sales"] (not in vpn-users)    amr ["pwd"]
    carol / carol-pass   groups ["vpn-users"], TOTP secret CAROL_TOTP_SECRET (RFC 6238, SHA-1, 6 digits, 30 s,
                         ±1 step accepted) on a second page    amr ["pwd", "otp"]
  Wrong password or unknown user: the login page comes back with "Wrong username or password." (HTTP 200, no
  redirect); wrong code: the code page comes back with "Wrong verification code.". Cancel ends the
  interaction with error=access_denied at the redirect URI. `OidcUser(..., amr=[...])` overrides amr (e.g.
  ["pwd", "mfa"] as Entra ID reports it), `claims={...}` adds claims, `disabled=True` refuses the password.
  ID token (RS256, header kid; ~750 bytes): iss, aud (= client_id), exp (iat + id_token_ttl), iat, auth_time,
  nonce, sub (= username unless OidcUser.sub), amr, groups, preferred_username, name, email (user@lab.p2sgw.test),
  email_verified, plus extra_claims / per-user claims: all released with the plain `openid` scope
  (conformIdTokenClaims: false). The callback query carries code, state and iss (RFC 9207).

Traps (see also shared/reference/lab.md §"OIDC provider + browser"):
- The RSA signing keys are generated here (cryptography) and passed in as PEM: Node occasionally hangs
  generating the provider's first key. `kid` = first 16 chars of the base64url SHA-256 of the public key.
- Chromium verifies the IdP's certificate through an NSS database in a throw-away HOME (certutil, Debian
  libnss3-tools); `ignore_https_errors` disables verification for *every* origin of that browser context.
- Chromium aborts loads with ERR_NETWORK_CHANGED while IPv6 settles on new links: the lab disables IPv6 in
  every namespace (the idp namespace too, before its veth exists).
- oidc-provider keeps codes, interactions and sessions in memory: stop()/start() and rotate_signing_key()
  forget them (in-flight sign-ins fail), which is what "IdP restarted" means.
- The provider's clock tolerance is 5 s; codes live `code_ttl` (60 s) and are single-use (a replayed code
  gives invalid_grant and revokes what it issued).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .lab import CLIENT_SEGMENT, GW_CLIENT_IP, Lab, _ip, drop_incoming, tail, undrop_incoming, wait_for_text, wait_until

IDP_DIR = Path(__file__).resolve().parent / "idp"
IDP_SCRIPT = IDP_DIR / "idp.mjs"
BROWSER_SCRIPT = IDP_DIR / "browser_login.py"
IDP_IP = "192.0.2.2"
DEFAULT_REDIRECT_URI = f"https://{GW_CLIENT_IP}/oidc/callback"
CAROL_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # base32, 20 bytes
EMAIL_DOMAIN = "lab.p2sgw.test"
READY_LINE = "p2s-idp ready"


# ----------------------------------------------------------------- users and clients


@dataclass(frozen=True)
class OidcUser:
    username: str
    password: str
    groups: Sequence[str] = ()
    totp_secret: str | None = None  # base32; the login then needs a second page with the current code
    amr: Sequence[str] | None = None  # default ["pwd"], or ["pwd", "otp"] with a TOTP secret
    claims: dict = field(default_factory=dict)  # more ID token claims for this user
    sub: str | None = None  # default: the username
    disabled: bool = False

    def entry(self) -> dict:
        entry: dict = {"password": self.password, "groups": list(self.groups)}
        if self.totp_secret:
            entry["totp_secret"] = self.totp_secret
        if self.amr is not None:
            entry["amr"] = list(self.amr)
        if self.claims:
            entry["claims"] = dict(self.claims)
        if self.sub:
            entry["sub"] = self.sub
        if self.disabled:
            entry["disabled"] = True
        return entry


def default_users() -> list[OidcUser]:
    return [
        OidcUser("alice", "alice-pass", ["vpn-users", "engineering"]),
        OidcUser("bob", "bob-pass", ["sales"]),
        OidcUser("carol", "carol-pass", ["vpn-users"], totp_secret=CAROL_TOTP_SECRET),
    ]


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    redirect_uris: Sequence[str]
    client_secret: str | None = None
    token_endpoint_auth_method: str | None = None  # default: "none" without a secret, else client_secret_basic

    def entry(self) -> dict:
        method = self.token_endpoint_auth_method or ("client_secret_basic" if self.client_secret else "none")
        entry = {"client_id": self.client_id, "redirect_uris": list(self.redirect_uris),
                 "token_endpoint_auth_method": method}
        if self.client_secret:
            entry["client_secret"] = self.client_secret
        return entry


# ----------------------------------------------------------------- certificates and keys


class TestCA:
    """A throw-away EC P-256 certificate authority in `directory` (ca.pem, ca.key)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "p2sgw lab OIDC test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.directory / "ca.key"
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)

    def issue(self, name: str, ips: Iterable[str] = (), dns: Iterable[str] = ()) -> tuple[Path, Path]:
        """A TLS server certificate for `ips`/`dns`: (name.pem, name.key) in the CA's directory."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        ips, dns = list(ips), list(dns)
        alt_names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips or [name])[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))  # browsers refuse more than 398 days
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def make_signing_key(path: Path) -> str:
    """Write a new RSA-2048 private key (PKCS#8 PEM) to `path`; return its kid."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")[:16]


# ----------------------------------------------------------------- the IdP's namespace


def add_segment_host(lab: Lab, name: str = "idp", address: str = IDP_IP) -> str:
    """A namespace `name` on the client bridge br0 with `address`/24 (idempotent); lab.close() removes it.

    Uses the lab's bookkeeping (namespaces, _created) so lab.run/popen accept `name` and cleanup is the lab's.
    """
    if name in lab.namespaces:
        return lab.namespaces[name]
    if ipaddress.ip_address(address) not in CLIENT_SEGMENT:
        raise ValueError(f"{address} is not on the client segment {CLIENT_SEGMENT}")
    taken = {lab.client_ip(i) for i in range(lab.n_clients)} | {GW_CLIENT_IP}
    if address in taken:
        raise ValueError(f"{address} is already used in the lab")
    full = f"{lab.prefix}-{name}"
    _ip("netns", "add", full)
    lab._created.append(full)
    lab.namespaces[name] = full
    # IPv6 off before the veth appears (Chromium's ERR_NETWORK_CHANGED trap), no forwarding: a plain host.
    lab.run(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.ip_forward=0")
    _ip("-n", full, "link", "set", "lo", "up")
    port = f"h{name}"[:15]
    _ip("link", "add", "eth0", "netns", full, "type", "veth", "peer", "name", port, "netns", lab.netns("gw"))
    _ip("-n", lab.netns("gw"), "link", "set", port, "master", "br0", "up")
    _ip("-n", full, "addr", "add", f"{address}/{CLIENT_SEGMENT.prefixlen}", "dev", "eth0")
    _ip("-n", full, "link", "set", "eth0", "up")
    return full


# ----------------------------------------------------------------- HTTP from inside a namespace

_HTTP_SCRIPT = r"""
import json, sys
import httpx
spec = json.load(sys.stdin)
out = {"status": None, "headers": {}, "text": None, "json": None, "url": None, "error": None}
try:
    with httpx.Client(verify=spec["verify"], timeout=spec["timeout"],
                      follow_redirects=spec["follow_redirects"]) as client:
        r = client.request(spec["method"], spec["url"], data=spec["data"], headers=spec["headers"],
                           auth=tuple(spec["auth"]) if spec["auth"] else None)
    out.update(status=r.status_code, headers=dict(r.headers), text=r.text, url=str(r.url))
    try:
        out["json"] = r.json()
    except ValueError:
        pass
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def lab_http(
    lab: Lab,
    ns: str,
    method: str,
    url: str,
    *,
    data: dict | None = None,
    headers: dict | None = None,
    auth: tuple[str, str] | None = None,
    verify: str | os.PathLike | bool | None = None,
    follow_redirects: bool = False,
    timeout: float = 10,
) -> dict:
    """One HTTP(S) request with httpx from inside namespace `ns` (see the module docstring)."""
    if verify is None:
        verify = True
    spec = {
        "method": method, "url": url, "data": data, "headers": headers or {}, "auth": list(auth) if auth else None,
        "verify": str(verify) if isinstance(verify, os.PathLike | str) else verify,
        "follow_redirects": follow_redirects, "timeout": timeout,
    }
    result = lab.run(ns, sys.executable, "-c", _HTTP_SCRIPT, input=json.dumps(spec), check=False, timeout=timeout + 30)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"http helper failed (rc {result.returncode}): {result.stderr}") from None


# ----------------------------------------------------------------- the provider


class OidcProvider:
    """One lab OIDC provider (see the module docstring)."""

    def __init__(
        self,
        lab: Lab,
        client_id: str = "p2sgw",
        redirect_uris: Sequence[str] | None = None,
        users: Iterable[OidcUser] | None = None,
        client_secret: str | None = None,
        id_token_ttl: int = 300,
        *,
        address: str = IDP_IP,
        port: int = 443,
        ns: str = "idp",
        name: str = "idp",
        token_endpoint_auth_method: str | None = None,
        extra_claims: dict | None = None,
        extra_clients: Iterable[OidcClient] = (),
        access_token_ttl: int = 300,
        code_ttl: int = 60,
    ) -> None:
        self.lab = lab
        self.ns = ns
        self.name = name
        self.address = address
        self.port = port
        self.client = OidcClient(
            client_id, list(redirect_uris or [DEFAULT_REDIRECT_URI]), client_secret, token_endpoint_auth_method
        )
        self.clients = [self.client, *extra_clients]
        self.users = list(users) if users is not None else default_users()
        self.id_token_ttl = id_token_ttl
        self.access_token_ttl = access_token_ttl
        self.code_ttl = code_ttl
        self.extra_claims = dict(extra_claims or {})
        self.issuer = f"https://{address}" + ("" if port == 443 else f":{port}")
        self.directory = lab.workdir / f"oidc-{name}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = lab.workdir / f"oidc-{name}.log"
        self.config_path = self.directory / "config.json"
        self.users_path = self.directory / "users.json"
        self.ca = TestCA(self.directory / "ca")
        self.ca_cert_path = self.ca.cert_path
        self.tls_cert_path, self.tls_key_path = self.ca.issue("idp-server", ips=[address])
        self._signing_keys: list[dict] = []
        self._add_signing_key()
        self.process: subprocess.Popen | None = None
        self._nft_table = f"p2s_{name.replace('-', '_')}"
        self._silenced = False

    # ----------------------------------------------------------------- properties
    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def client_secret(self) -> str | None:
        return self.client.client_secret

    @property
    def redirect_uris(self) -> list[str]:
        return list(self.client.redirect_uris)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def signing_kid(self) -> str:
        return self._signing_keys[0]["kid"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> OidcProvider:
        """Write config and users, run the provider in its namespace, wait until it listens."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"oidc-provider is not installed: `npm ci --prefix {IDP_DIR}` (scripts/install test)")
        if shutil.which("node") is None:
            raise RuntimeError("node is not on PATH (Debian packages nodejs npm)")
        if self.ns == "idp":
            add_segment_host(self.lab, self.ns, self.address)
        self._write_config()
        for attempt in (1, 2):  # a hung Node start is retried once (lab.md: rare hangs at startup)
            mark = self.log_mark()
            self.process = self.lab.popen(self.ns, "node", IDP_SCRIPT, self.config_path, log=self.log_path, cwd=IDP_DIR)
            try:
                self.wait_for_log(READY_LINE, since=mark, timeout=timeout / 2 if attempt == 1 else timeout)
                return self
            except TimeoutError:
                self.lab.stop(self.process)
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.lab.stop(self.process)
            self.process = None

    def restart(self) -> OidcProvider:
        self.stop()
        return self.start()

    def _write_config(self) -> None:
        self.set_users(self.users)
        config = {
            "issuer": self.issuer,
            "host": self.address,
            "port": self.port,
            "tls_cert": str(self.tls_cert_path),
            "tls_key": str(self.tls_key_path),
            "signing_keys": self._signing_keys,
            "clients": [client.entry() for client in self.clients],
            "users_file": str(self.users_path),
            "id_token_ttl": self.id_token_ttl,
            "access_token_ttl": self.access_token_ttl,
            "code_ttl": self.code_ttl,
            "extra_claims": self.extra_claims,
            "email_domain": EMAIL_DOMAIN,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def set_users(self, users: Iterable[OidcUser]) -> None:
        """Replace the users (read on every login). Claim names new since start() need a restart()."""
        self.users = list(users)
        self.users_path.write_text(json.dumps({u.username: u.entry() for u in self.users}, indent=2))

    def _add_signing_key(self) -> str:
        path = self.directory / f"signing-{len(self._signing_keys) + 1}.pem"
        kid = make_signing_key(path)
        self._signing_keys.insert(0, {"pem": str(path), "kid": kid})
        return kid

    def rotate_signing_key(self, keep_old: bool = True) -> str:
        """Sign with a new RSA key from now on (restarts a running provider); return the new kid."""
        kid = self._add_signing_key()
        if not keep_old:
            del self._signing_keys[1:]
        if self.running:
            self.restart()
        return kid

    def jwks(self) -> dict:
        """The public JWKS this provider serves (computed locally from the keys, no request)."""
        import jwt

        keys = []
        for entry in self._signing_keys:
            from cryptography.hazmat.primitives import serialization

            private = serialization.load_pem_private_key(Path(entry["pem"]).read_bytes(), password=None)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            keys.append({"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": entry["kid"], "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    # ----------------------------------------------------------------- logs
    def log_mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, since: int | None = None) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since or 0)
            return f.read().decode(errors="replace")

    def wait_for_log(self, needle: str, since: int | None = None, timeout: float = 10) -> None:
        def found() -> bool:
            if needle in self.log_text(since):
                return True
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the IdP exited with {self.process.returncode}:\n{tail(self.log_path)}")
            return False

        try:
            wait_until(found, timeout, what=f"{needle!r} in {self.log_path}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.log_path)}") from None

    # ----------------------------------------------------------------- failure injection
    def silence(self) -> None:
        """Drop TCP to the provider's port in its namespace: connections hang (no RST), like a dead host."""
        drop_incoming(self.lab, self.ns, self._nft_table, f"ip daddr {self.address} tcp dport {self.port}")
        self._silenced = True

    def unsilence(self) -> None:
        if self._silenced:
            undrop_incoming(self.lab, self.ns, self._nft_table)
            self._silenced = False

    # ----------------------------------------------------------------- helpers
    def http(self, ns: str, method: str, path_or_url: str, **kwargs) -> dict:
        """lab_http against this provider (a path is relative to the issuer), verifying with its CA."""
        url = path_or_url if "://" in path_or_url else self.issuer + path_or_url
        kwargs.setdefault("verify", self.ca_cert_path)
        return lab_http(self.lab, ns, method, url, **kwargs)

    def browser_login(self, ns: str, url: str, username: str, password: str, **kwargs) -> dict:
        """browser_login() trusting this provider's CA (plus any ca_files given)."""
        kwargs["ca_files"] = [self.ca_cert_path, *kwargs.get("ca_files", ())]
        return browser_login(self.lab, ns, url, username, password, **kwargs)


# ----------------------------------------------------------------- the browser


def browser_login(
    lab: Lab,
    ns: str,
    url: str,
    username: str,
    password: str,
    totp_secret: str | None = None,
    cancel: bool | str = False,
    timeout: float = 60,
    *,
    ca_files: Iterable[str | os.PathLike] = (),
    ignore_https_errors: bool = False,
    totp_code: str | None = None,
    wait_text: str | None = None,
    screenshot: str | os.PathLike | None = None,
) -> dict:
    """Run tests/e2e/idp/browser_login.py (headless Debian Chromium via Playwright) inside `ns`; its JSON."""
    argv: list[str] = [sys.executable, str(BROWSER_SCRIPT), url, "--username", username, "--password", password,
                       "--timeout", str(timeout)]
    if totp_secret:
        argv += ["--totp-secret", totp_secret]
    if totp_code is not None:
        argv += ["--totp-code", totp_code]
    if cancel:
        argv += ["--cancel", "login" if cancel is True else str(cancel)]
    for ca in ca_files:
        argv += ["--ca-file", str(ca)]
    if ignore_https_errors:
        argv.append("--ignore-https-errors")
    if wait_text:
        argv += ["--wait-text", wait_text]
    if screenshot:
        argv += ["--screenshot", str(screenshot)]
    result = lab.run(ns, *argv, check=False, timeout=timeout + 30)
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(
            f"browser_login.py printed no JSON (rc {result.returncode}):\n{result.stdout}\n{result.stderr}"
        ) from None
    report["stderr"] = result.stderr[-4000:]
    return report


# ----------------------------------------------------------------- relying-party helpers for tests


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def authorization_url(
    auth_endpoint: str,
    client_id: str,
    redirect_uri: str,
    *,
    state: str,
    nonce: str,
    code_challenge: str | None,
    scope: str = "openid profile email",
    **extra: str,
) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
              "state": state, "nonce": nonce, **extra}
    if code_challenge is not None:
        params.update(code_challenge=code_challenge, code_challenge_method="S256")
    return auth_endpoint + "?" + urllib.parse.urlencode(params)


_RECORDER_SCRIPT = r"""
import http.server, json, ssl, sys, urllib.parse
host, port, cert, key, record, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if parts.path != path:  # e.g. the browser's /favicon.ico
            self.send_error(404)
            return
        with open(record, "a") as f:
            f.write(json.dumps({"path": parts.path, "query": query}) + "\n")
        body = ("<!doctype html><title>Callback received</title><h1>Callback received</h1>"
                "<p id=result>" + ("error " + query["error"] if "error" in query else "code received") + "</p>")
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(fmt % args, flush=True)

server = http.server.ThreadingHTTPServer((host, port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("recorder ready", flush=True)
server.serve_forever()
"""


class CallbackRecorder:
    """An HTTPS redirect-URI endpoint in a client namespace that records each request (see module docstring)."""

    def __init__(self, lab: Lab, ca: TestCA, ns: str = "c0", port: int = 8443, path: str = "/callback") -> None:
        if not (ns.startswith("c") and ns[1:].isdigit()):
            raise ValueError("the recorder runs in a client namespace (c0, c1, ...)")
        self.lab = lab
        self.ns = ns
        self.address = lab.client_ip(int(ns[1:]))
        self.port = port
        self.path = path
        self.url = f"https://{self.address}:{port}{path}"
        self.record_path = lab.workdir / f"callback-{ns}-{port}.jsonl"
        self.log_path = lab.workdir / f"callback-{ns}-{port}.log"
        self.cert_path, self.key_path = ca.issue(f"callback-{ns}-{port}", ips=[self.address])
        self.process: subprocess.Popen | None = None

    def start(self) -> CallbackRecorder:
        self.record_path.write_text("")
        self.process = self.lab.popen(
            self.ns, sys.executable, "-u", "-c", _RECORDER_SCRIPT, self.address, str(self.port), self.cert_path,
            self.key_path, self.record_path, self.path, log=self.log_path,
        )
        wait_for_text(self.log_path, "recorder ready", 10, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.lab.stop(self.process)
            self.process = None

    def requests(self) -> list[dict]:
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines() if line.strip()]

    def wait_for_request(self, timeout: float = 10, count: int = 1) -> dict:
        wait_until(lambda: len(self.requests()) >= count, timeout, what=f"{count} request(s) at {self.url}")
        return self.requests()[count - 1]
