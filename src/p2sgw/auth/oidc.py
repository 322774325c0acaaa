"""OpenID Connect relying party for WEB_AUTH sign-in (Microsoft Entra ID or any OIDC provider).

Authorization code flow with PKCE (S256), state and nonce (OIDC Core 1.0, RFC 6749, RFC 7636).
The gateway's HTTPS endpoint drives it:

    provider = OidcProvider(config.oidc, "https://vpn.example.com/oidc/callback")
    await provider.ensure_discovered()                 # at start-up, and again before begin()
    request = provider.begin(pending_id)              # GET /a/<pending_id>: 302 to request.url
    request, identity = await provider.handle_callback(query)   # GET /oidc/callback?code&state

The pure parts (PKCE, `PendingSignIns`, `JwksCache`, `check_id_token_claims`, `verify_jws`) take
`now` and data as arguments; only `OidcProvider` does I/O (httpx). Every refusal is an `OidcError`
whose text can be shown to the user as it is (OpenVPN AUTH_FAILED reason, the failure page);
`detail` has the values for the log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import jwt

from ..config import OidcSettings
from ..logs import log, warn

METHOD = "oidc"

# Asymmetric algorithms only: never "none", never HS* (an HMAC "key" would be the public key).
ALLOWED_ALGORITHMS: frozenset[str] = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                                "ES256", "ES384"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384"}

# Entra tenant aliases whose metadata `issuer` is a template with `{tenantid}`: the token's issuer
# is then that of the user's own tenant.
ENTRA_MULTI_TENANT = frozenset({"common", "organizations"})
TENANT_PLACEHOLDER = "{tenantid}"

JWKS_TTL = 3600.0  # keys are fetched again after this many seconds
JWKS_MIN_REFETCH = 60.0  # an unknown `kid` causes at most one JWKS fetch per this many seconds
METADATA_TTL = 86400.0  # discovery is repeated after this many seconds
HTTP_TIMEOUT = 10.0
MAX_PENDING = 10000
MAX_PER_PENDING_ID = 4  # browser tabs/reloads for one VPN sign-in; older states are dropped
MAX_RESPONSE_BYTES = 1 << 20
_IDP_TEXT_MAX = 300


class OidcError(Exception):
    """A refused or failed sign-in. `str(error)` is fit for the user; `detail` is for the log.

    `code` is a short stable name ("audience", "unreachable", ...) for logs and metrics;
    `pending_id` is set once the callback's state was matched to a pending VPN sign-in."""

    def __init__(self, message: str, *, code: str = "error", detail: str = "",
                 pending_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail
        self.pending_id = pending_id


# ---------------------------------------------------------------------------- data


@dataclass(slots=True, frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_endpoint_auth_methods: tuple[str, ...] = ("client_secret_basic",)  # RFC 8414 default
    code_challenge_methods: tuple[str, ...] = ()
    id_token_algs: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False

    @property
    def issuer_is_template(self) -> bool:
        return TENANT_PLACEHOLDER in self.issuer

    def issuer_matches(self, iss: str) -> bool:
        if not self.issuer_is_template:
            return iss == self.issuer
        prefix, _, suffix = self.issuer.partition(TENANT_PLACEHOLDER)
        tenant = iss[len(prefix):len(iss) - len(suffix)] if len(iss) > len(prefix) + len(suffix) else ""
        return iss.startswith(prefix) and iss.endswith(suffix) and bool(tenant) and "/" not in tenant


@dataclass(slots=True, frozen=True)
class AuthorizationRequest:
    """One browser sign-in attempt for one pending VPN session (the values live only here)."""

    url: str = field(repr=False)
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    created: float
    pending_id: str = ""
    expires: float = 0.0
    redirect_uri: str = ""

    @property
    def code_challenge(self) -> str:
        return pkce_challenge(self.code_verifier)


@dataclass(slots=True)
class OidcIdentity:
    username: str
    subject: str
    groups: list[str]
    amr: list[str]
    claims: dict[str, Any] = field(repr=False)

    @property
    def issuer(self) -> str:
        return str(self.claims.get("iss", ""))

    @property
    def tenant_id(self) -> str | None:
        tid = self.claims.get("tid")
        return str(tid) if tid is not None else None

    @property
    def groups_overage(self) -> bool:
        """Entra left the groups out (too many) and points at Microsoft Graph instead."""
        names = self.claims.get("_claim_names")
        return isinstance(names, dict) and "groups" in names and "groups" not in self.claims


# ---------------------------------------------------------------------------- pure helpers


def random_token(nbytes: int = 32) -> str:
    """URL-safe random text (nbytes of entropy: 32 → 256 bits, 43 characters)."""
    return secrets.token_urlsafe(nbytes)


def new_code_verifier() -> str:
    """RFC 7636 §4.1: 43–128 characters of [A-Za-z0-9-._~]; 64 characters, 384 bits."""
    return secrets.token_urlsafe(48)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2 S256: BASE64URL(SHA256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def require_https(url: str, what: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise OidcError(f"the {what} must be an https:// URL", code="config", detail=url)
    return url


def add_query(url: str, params: Mapping[str, str]) -> str:
    """Append params to a URL that may already carry a query (some IdPs put `p=policy` there)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode(list(params.items()), quote_via=urllib.parse.quote)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, joined, parts.fragment))


def ssl_context(settings: OidcSettings) -> ssl.SSLContext:
    """Trust for the IdP: `ca_file` alone when configured (a private CA), else the system store."""
    try:
        if settings.ca_file:
            return ssl.create_default_context(cafile=settings.ca_file)
        return ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise OidcError("the identity provider CA file cannot be read", code="config",
                        detail=f"{settings.ca_file}: {exc}") from exc


def parse_metadata(document: Any, configured_issuer: str) -> ProviderMetadata:
    """Check a discovery document (OIDC Discovery §4.3: `issuer` must equal the configured one)."""
    if not isinstance(document, dict):
        raise OidcError("identity provider unreachable: the discovery document is not a JSON object",
                        code="unreachable")
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise OidcError("identity provider discovery document has no issuer", code="discovery")
    if issuer != configured_issuer:
        # Entra's multi-tenant endpoints publish https://login.microsoftonline.com/{tenantid}/v2.0
        segment = urllib.parse.urlsplit(configured_issuer).path.strip("/").split("/", 1)[0]
        templated = (TENANT_PLACEHOLDER in issuer and segment.lower() in ENTRA_MULTI_TENANT
                     and issuer.replace(TENANT_PLACEHOLDER, segment) == configured_issuer)
        if not templated:
            raise OidcError("identity provider issuer mismatch: check the configured issuer URL",
                            code="discovery", detail=f"configured {configured_issuer!r}, metadata {issuer!r}")
    values: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise OidcError(f"identity provider discovery document has no {name}", code="discovery")
        values[name] = require_https(value, f"identity provider {name}")

    def strings(name: str) -> tuple[str, ...]:
        value = document.get(name)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    methods = strings("code_challenge_methods_supported")
    if methods and "S256" not in methods:
        raise OidcError("identity provider does not support PKCE with S256", code="discovery",
                        detail=f"code_challenge_methods_supported={list(methods)}")
    return ProviderMetadata(
        issuer=issuer,
        token_endpoint_auth_methods=strings("token_endpoint_auth_methods_supported") or ("client_secret_basic",),
        code_challenge_methods=methods,
        id_token_algs=strings("id_token_signing_alg_values_supported"),
        authorization_response_iss_parameter_supported=bool(
            document.get("authorization_response_iss_parameter_supported", False)),
        **values,
    )


# ---------------------------------------------------------------------------- pending sign-ins


class PendingSignIns:
    """state → AuthorizationRequest; single use, with expiry and a size bound. Pure (`now` given)."""

    def __init__(self, ttl: float, *, max_entries: int = MAX_PENDING,
                 max_per_pending_id: int = MAX_PER_PENDING_ID) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_per_pending_id = max_per_pending_id
        self._by_state: OrderedDict[str, AuthorizationRequest] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_state)

    def add(self, request: AuthorizationRequest, now: float) -> None:
        self.expire(now)
        same = [s for s, r in self._by_state.items() if r.pending_id == request.pending_id]
        for state in same[: max(0, len(same) - self.max_per_pending_id + 1)]:
            del self._by_state[state]
        while len(self._by_state) >= self.max_entries:
            self._by_state.popitem(last=False)  # the oldest
        self._by_state[request.state] = request

    def take(self, state: str, now: float) -> AuthorizationRequest | None:
        """The request for `state`, removed: a second take (a replayed callback) gives None, as
        does an expired one."""
        request = self._by_state.pop(state, None) if state else None
        if request is None or now > request.expires:
            return None
        return request

    def claim(self, state: str, now: float) -> AuthorizationRequest:
        """Like take(), but tells why not."""
        if not state:
            raise OidcError("the sign-in response has no state", code="state")
        request = self._by_state.pop(state, None)
        if request is None:
            raise OidcError("unknown or already used sign-in request: start the VPN connection again",
                            code="state", detail="state not found (replayed callback, stale link or state mismatch)")
        if now > request.expires:
            raise OidcError("the sign-in took too long and has expired: start the VPN connection again",
                            code="expired", pending_id=request.pending_id,
                            detail=f"{now - request.created:.0f} s after it was started")
        return request

    def discard(self, pending_id: str) -> int:
        """Forget every state of a pending VPN session (it was cancelled or timed out)."""
        states = [s for s, r in self._by_state.items() if r.pending_id == pending_id]
        for state in states:
            del self._by_state[state]
        return len(states)

    def expire(self, now: float) -> int:
        dead = [s for s, r in self._by_state.items() if now > r.expires]
        for state in dead:
            del self._by_state[state]
        return len(dead)


# ---------------------------------------------------------------------------- JWKS


class JwksCache:
    """The provider's signing keys by `kid`, with a TTL and a rate limit for unknown-kid refetches."""

    def __init__(self, ttl: float = JWKS_TTL, min_refetch: float = JWKS_MIN_REFETCH) -> None:
        self.ttl = ttl
        self.min_refetch = min_refetch
        self.keys: dict[str, dict[str, Any]] = {}
        self.fetched_at: float | None = None  # last successful load
        self.attempted_at: float | None = None  # last fetch attempt, successful or not
        self.generation = 0  # bumped on every load

    def load(self, document: Any, now: float) -> None:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise OidcError("identity provider unreachable: its key set (JWKS) is not valid JSON",
                            code="unreachable")
        keys: dict[str, dict[str, Any]] = {}
        for key in document["keys"]:
            if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
                continue
            if key.get("use", "sig") != "sig":
                continue
            ops = key.get("key_ops")
            if isinstance(ops, list) and "verify" not in ops:
                continue
            kid = key.get("kid", "")
            keys[kid if isinstance(kid, str) else str(kid)] = key
        if not keys:
            raise OidcError("identity provider key set (JWKS) has no usable signing keys", code="jwks")
        self.keys = keys
        self.fetched_at = now
        self.generation += 1

    def get(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:  # allowed by OIDC Core §10.1 when there is only one key
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    def stale(self, now: float) -> bool:
        return self.fetched_at is None or now - self.fetched_at >= self.ttl

    def may_refetch(self, now: float) -> bool:
        return self.attempted_at is None or now - self.attempted_at >= self.min_refetch


# ---------------------------------------------------------------------------- token validation


def token_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise OidcError("malformed ID token", code="malformed", detail=str(exc)) from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise OidcError("ID token signing algorithm not allowed", code="algorithm", detail=f"alg={alg!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise OidcError("malformed ID token", code="malformed", detail=f"kid={kid!r}")
    return header


def verify_jws(token: str, jwk: Mapping[str, Any], alg: str) -> dict[str, Any]:
    """Check the signature with one JWK and return the (not yet validated) claims."""
    if alg not in ALLOWED_ALGORITHMS:
        raise OidcError("ID token signing algorithm not allowed", code="algorithm", detail=f"alg={alg!r}")
    kty = jwk.get("kty")
    wanted_kty = "EC" if alg.startswith("ES") else "RSA"
    if kty != wanted_kty or (kty == "EC" and jwk.get("crv") != _EC_CURVES[alg]):
        raise OidcError("ID token signing key does not fit its algorithm", code="algorithm",
                        detail=f"alg={alg} kty={kty} crv={jwk.get('crv')}")
    if "alg" in jwk and jwk["alg"] != alg:
        raise OidcError("ID token signing algorithm does not match the key", code="algorithm",
                        detail=f"token alg={alg} key alg={jwk['alg']}")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWTError as exc:
        raise OidcError("the identity provider's signing key is unusable", code="jwks", detail=str(exc)) from exc
    options = {"verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
               "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
               "enforce_minimum_key_length": True}
    try:
        claims = jwt.decode(token, key=key, algorithms=[alg], options=options)
    except jwt.InvalidSignatureError as exc:
        raise OidcError("ID token signature is invalid", code="signature", detail=str(exc)) from exc
    except jwt.InvalidKeyError as exc:
        raise OidcError("the identity provider's signing key is too weak", code="jwks", detail=str(exc)) from exc
    except jwt.PyJWTError as exc:
        raise OidcError("malformed ID token", code="malformed", detail=str(exc)) from exc
    if not isinstance(claims, dict):
        raise OidcError("malformed ID token", code="malformed", detail="payload is not an object")
    return claims


def _numeric(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise OidcError(f"ID token has no {name} claim", code="claims")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OidcError(f"ID token {name} claim is not a number", code="claims", detail=f"{name}={value!r}")
    return float(value)


def _string_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int))]
    return []


def expected_issuers(settings: OidcSettings, metadata: ProviderMetadata | None,
                     claims: Mapping[str, Any]) -> list[str]:
    issuers = list(settings.accepted_issuers())
    if metadata is not None:
        if metadata.issuer_is_template:
            tid = claims.get("tid")
            if isinstance(tid, str) and tid:
                issuers.append(metadata.issuer.replace(TENANT_PLACEHOLDER, tid))
        elif metadata.issuer not in issuers:
            issuers.append(metadata.issuer)  # equal to the configured one (parse_metadata checked)
    return issuers


def check_id_token_claims(claims: dict[str, Any], *, settings: OidcSettings, nonce: str, now: float,
                          metadata: ProviderMetadata | None = None) -> OidcIdentity:
    """OIDC Core §3.1.3.7 on signature-checked claims, then the gateway's policy (tenant, amr,
    groups). Pure: `now` is given."""
    leeway = float(settings.leeway)

    iss = claims.get("iss")
    issuers = expected_issuers(settings, metadata, claims)
    if not isinstance(iss, str) or iss not in issuers:
        raise OidcError("token issuer mismatch", code="issuer", detail=f"iss={iss!r}, accepted {issuers}")

    audience = settings.audience or settings.client_id
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not auds or audience not in auds:
        raise OidcError("token audience mismatch", code="audience", detail=f"aud={aud!r}, expected {audience!r}")
    azp = claims.get("azp")
    if len(auds) > 1 and azp is not None and azp != settings.client_id:
        raise OidcError("token authorized party (azp) mismatch", code="audience",
                        detail=f"azp={azp!r}, expected {settings.client_id!r}")

    exp = _numeric(claims, "exp", True) or 0.0
    iat = _numeric(claims, "iat", True) or 0.0
    nbf = _numeric(claims, "nbf", False)
    if now > exp + leeway:
        raise OidcError("token expired", code="expired", detail=f"exp={exp:.0f} now={now:.0f} leeway={leeway:.0f}")
    if nbf is not None and nbf > now + leeway:
        raise OidcError("token not yet valid (check the gateway's clock)", code="not_yet_valid",
                        detail=f"nbf={nbf:.0f} now={now:.0f} leeway={leeway:.0f}")
    if iat > now + leeway:
        raise OidcError("token issued in the future (check the gateway's clock)", code="not_yet_valid",
                        detail=f"iat={iat:.0f} now={now:.0f} leeway={leeway:.0f}")

    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise OidcError("token nonce mismatch (replayed or foreign token)", code="nonce")

    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise OidcError("ID token has no subject (sub)", code="claims")

    tenant = (settings.tenant_id or "").strip()
    if tenant and tenant.lower() not in ENTRA_MULTI_TENANT:
        tid = claims.get("tid")
        if not isinstance(tid, str) or not tid:
            raise OidcError("token has no tenant id (tid)", code="tenant")
        if tid.lower() != tenant.lower():
            raise OidcError("user belongs to another Entra tenant", code="tenant",
                            detail=f"tid={tid!r}, expected {tenant!r}")

    amr = _string_list(claims.get("amr"))
    missing = [m for m in settings.required_amr if m not in amr]
    if missing:
        if "mfa" in missing:
            raise OidcError("multi-factor authentication required", code="mfa", detail=f"amr={amr}")
        raise OidcError(f"sign-in method not accepted: {', '.join(missing)} required", code="mfa",
                        detail=f"amr={amr}")

    claim = settings.group_claim
    names = claims.get("_claim_names")
    overage = claim not in claims and isinstance(names, dict) and claim in names
    groups = _string_list(claims.get(claim))
    if settings.allowed_groups:
        if overage:
            raise OidcError("the user is in too many groups for the token (Entra group overage), which is not "
                            "supported: limit the groups claim in the app registration (groups assigned to the "
                            "application)", code="groups_overage")
        if not set(groups) & set(settings.allowed_groups):
            raise OidcError("user is not in an allowed group", code="groups",
                            detail=f"{claim}={groups}")

    username = ""
    for name in (settings.username_claim, "preferred_username", "upn", "email", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            username = value.strip()
            break
    return OidcIdentity(username=username, subject=sub, groups=groups, amr=amr, claims=claims)


# ---------------------------------------------------------------------------- the provider (I/O)


def _idp_text(value: Any) -> str:
    text = " ".join(str(value).split())
    return text[:_IDP_TEXT_MAX] + ("…" if len(text) > _IDP_TEXT_MAX else "")


def _form_encode(value: str) -> str:
    return urllib.parse.quote_plus(value, safe="")


class OidcProvider:
    """The relying party for one configured provider. Shares one httpx.AsyncClient; safe to use
    from many concurrent sign-ins (discovery and JWKS fetches are serialised)."""

    def __init__(self, settings: OidcSettings, redirect_uri: str, *, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time, jwks_ttl: float = JWKS_TTL,
                 jwks_min_refetch: float = JWKS_MIN_REFETCH, metadata_ttl: float = METADATA_TTL,
                 timeout: float = HTTP_TIMEOUT) -> None:
        self.settings = settings
        self.issuer = settings.effective_issuer()
        if not self.issuer:
            raise OidcError("no OIDC issuer configured (set oidc.issuer or oidc.tenant_id)", code="config")
        require_https(self.issuer, "OIDC issuer")
        if not settings.client_id:
            raise OidcError("no OIDC client id configured", code="config")
        if "openid" not in settings.scopes:
            raise OidcError("the OIDC scopes must include 'openid'", code="config")
        self.redirect_uri = redirect_uri
        self.clock = clock
        self.metadata_ttl = metadata_ttl
        self.metadata: ProviderMetadata | None = None
        self._metadata_at: float | None = None
        self.jwks = JwksCache(jwks_ttl, jwks_min_refetch)
        self.pending = PendingSignIns(settings.sign_in_timeout)
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(verify=ssl_context(settings), timeout=timeout,
                                              follow_redirects=False,
                                              headers={"User-Agent": "p2sgw"})
        self._discover_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- HTTP

    async def _request_json(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            warn("oidc.idp_unreachable", url=url, error=f"{type(exc).__name__}: {reason}")
            raise OidcError(f"identity provider unreachable: {_idp_text(reason)}", code="unreachable",
                            detail=f"{method} {url}: {type(exc).__name__}: {reason}") from exc
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise OidcError("identity provider unreachable: response too large", code="unreachable",
                            detail=f"{method} {url}: {len(response.content)} bytes")
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        return response.status_code, body

    async def _get_json(self, url: str, what: str) -> Any:
        status, body = await self._request_json("GET", url, headers={"Accept": "application/json"})
        if status != 200:
            raise OidcError(f"identity provider unreachable: {what} returned HTTP {status}", code="unreachable",
                            detail=f"GET {url}: HTTP {status}")
        if body is None:
            raise OidcError(f"identity provider unreachable: {what} is not valid JSON", code="unreachable",
                            detail=f"GET {url}")
        return body

    # -- discovery

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def discover(self) -> ProviderMetadata:
        """Fetch and check the discovery document (always fetches)."""
        async with self._discover_lock:
            document = await self._get_json(self.discovery_url, "the discovery document")
            metadata = parse_metadata(document, self.issuer)
            self.metadata = metadata
            self._metadata_at = self.clock()
            log("oidc.discovered", issuer=metadata.issuer, token_endpoint=metadata.token_endpoint)
            return metadata

    async def ensure_discovered(self) -> ProviderMetadata:
        """Cached metadata; discovered again after metadata_ttl (the old copy is kept if that fails)."""
        now = self.clock()
        if self.metadata is not None and self._metadata_at is not None and now - self._metadata_at < self.metadata_ttl:
            return self.metadata
        try:
            return await self.discover()
        except OidcError as exc:
            if self.metadata is None:
                raise
            warn("oidc.rediscovery_failed", reason=str(exc), detail=exc.detail)
            self._metadata_at = now
            return self.metadata

    def _require_metadata(self) -> ProviderMetadata:
        if self.metadata is None:
            raise OidcError("identity provider unreachable: not discovered yet", code="unreachable")
        return self.metadata

    # -- JWKS

    async def _fetch_jwks(self, seen_generation: int) -> None:
        async with self._jwks_lock:
            if self.jwks.generation != seen_generation:
                return  # someone else fetched while we waited
            metadata = self._require_metadata()
            self.jwks.attempted_at = self.clock()
            document = await self._get_json(metadata.jwks_uri, "the key set (JWKS)")
            self.jwks.load(document, self.clock())
            log("oidc.jwks_loaded", keys=len(self.jwks.keys))

    async def signing_key(self, kid: str | None) -> dict[str, Any]:
        """The JWK for `kid`: from the cache, refetched when stale, and once (rate-limited) when the
        kid is unknown (key rotation)."""
        now = self.clock()
        if self.jwks.stale(now):
            try:
                await self._fetch_jwks(self.jwks.generation)
            except OidcError:
                if self.jwks.fetched_at is None:
                    raise
                warn("oidc.jwks_refresh_failed", note="using the cached keys")
        key = self.jwks.get(kid)
        if key is None and self.jwks.may_refetch(self.clock()):
            await self._fetch_jwks(self.jwks.generation)
            key = self.jwks.get(kid)
        if key is None:
            raise OidcError("ID token signed with an unknown key", code="unknown_key", detail=f"kid={kid!r}")
        return key

    # -- the flow

    def begin(self, pending_id: str, *, login_hint: str | None = None, prompt: str | None = None,
              domain_hint: str | None = None, extra_params: Mapping[str, str] | None = None,
              not_after: float | None = None) -> AuthorizationRequest:
        """A new authorization request for a pending VPN sign-in, remembered in `self.pending`.
        Needs discovery done (await ensure_discovered() first). It expires after sign_in_timeout,
        or at `not_after` (the pending VPN session's own deadline, clock time) if that is sooner."""
        metadata = self._require_metadata()
        now = self.clock()
        state, nonce, verifier = random_token(32), random_token(32), new_code_verifier()
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if prompt:
            params["prompt"] = prompt
        if login_hint:
            params["login_hint"] = login_hint
        if domain_hint:
            params["domain_hint"] = domain_hint
        for name, value in (extra_params or {}).items():
            params.setdefault(name, value)
        request = AuthorizationRequest(
            url=add_query(metadata.authorization_endpoint, params), state=state, nonce=nonce,
            code_verifier=verifier, created=now, pending_id=pending_id,
            expires=min(now + self.pending.ttl, not_after if not_after is not None else float("inf")),
            redirect_uri=self.redirect_uri)
        self.pending.add(request, now)
        return request

    async def handle_callback(self, params: Mapping[str, str]) -> tuple[AuthorizationRequest, OidcIdentity]:
        """GET /oidc/callback: match state (single use), take the IdP's error or the code, exchange
        it and validate the ID token. OidcError.pending_id tells which pending session failed."""
        request = self.pending.claim(params.get("state", ""), self.clock())
        try:
            metadata = self._require_metadata()
            iss = params.get("iss")  # RFC 9207: which provider answered (mix-up defence)
            if iss is not None and not metadata.issuer_matches(iss):
                raise OidcError("sign-in response from the wrong identity provider", code="issuer",
                                detail=f"iss={iss!r}, expected {metadata.issuer!r}")
            error = params.get("error")
            if error:
                description = params.get("error_description", "")
                if error == "access_denied":
                    message = "sign-in was cancelled or denied at the identity provider"
                else:
                    message = f"identity provider refused the sign-in: {_idp_text(error)}"
                if description:
                    message += f": {_idp_text(description)}"
                raise OidcError(message, code="idp_error", detail=f"error={error!r} description={description!r}")
            code = params.get("code", "")
            if not code:
                raise OidcError("the sign-in response has no authorization code", code="callback")
            identity = await self.complete(code, request)
        except OidcError as exc:
            exc.pending_id = request.pending_id
            raise
        return request, identity

    def _token_request(self, code: str, request: AuthorizationRequest,
                       metadata: ProviderMetadata) -> tuple[dict[str, str], dict[str, str]]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri or self.redirect_uri,
            "code_verifier": request.code_verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.client_secret
        methods = metadata.token_endpoint_auth_methods
        if secret and "client_secret_post" not in methods and "client_secret_basic" in methods:
            # RFC 6749 §2.3.1: both parts form-urlencoded before base64
            raw = f"{_form_encode(self.settings.client_id)}:{_form_encode(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        else:
            form["client_id"] = self.settings.client_id
            if secret:
                form["client_secret"] = secret
        return form, headers

    async def complete(self, code: str, request: AuthorizationRequest) -> OidcIdentity:
        """Exchange the authorization code (with the PKCE verifier) and validate the ID token."""
        metadata = await self.ensure_discovered()
        form, headers = self._token_request(code, request, metadata)
        status, body = await self._request_json("POST", metadata.token_endpoint, data=form, headers=headers)
        if isinstance(body, dict) and body.get("error"):
            error, description = body.get("error"), body.get("error_description", "")
            message = f"identity provider refused the sign-in: {_idp_text(error)}"
            if description:
                message += f": {_idp_text(description)}"
            raise OidcError(message, code="token_error", detail=f"HTTP {status} error={error!r} "
                            f"description={description!r}")
        if status != 200:
            raise OidcError(f"identity provider unreachable: token endpoint returned HTTP {status}",
                            code="unreachable", detail=f"POST {metadata.token_endpoint}: HTTP {status}")
        if not isinstance(body, dict):
            raise OidcError("identity provider unreachable: token response is not valid JSON", code="unreachable")
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("the identity provider sent no ID token (is 'openid' in the scopes?)", code="token_error")
        return await self.validate_id_token(id_token, request.nonce)

    async def validate_id_token(self, token: str, nonce: str) -> OidcIdentity:
        """Signature (JWKS by kid, with rotation), then every claim check."""
        metadata = await self.ensure_discovered()
        header = token_header(token)
        key = await self.signing_key(header.get("kid"))
        claims = verify_jws(token, key, header["alg"])
        return check_id_token_claims(claims, settings=self.settings, nonce=nonce, now=self.clock(),
                                     metadata=metadata)

