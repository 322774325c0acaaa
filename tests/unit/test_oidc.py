"""The OIDC relying party: PKCE, state/nonce, discovery, JWKS rotation, ID-token validation and the
gateway's policy checks, against an in-process identity provider behind httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from p2sgw.auth.oidc import (
    AuthorizationRequest,
    JwksCache,
    OidcError,
    OidcProvider,
    PendingSignIns,
    check_id_token_claims,
    parse_metadata,
    pkce_challenge,
)
from p2sgw.config import OidcSettings

ISSUER = "https://idp.example.test/realms/vpn"
CLIENT_ID = "p2sgw-gateway"
REDIRECT = "https://vpn.example.com/oidc/callback"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
T0 = 1_700_000_000.0


def run(coro):
    return asyncio.run(coro)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def rsa_keys():
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key, kid: str, **extra) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", **extra)
    return jwk


@dataclass
class FakeIdP:
    """Discovery, JWKS and token endpoint; `authorize()` plays the browser + login page."""

    issuer: str
    signing: tuple[Any, str, str]  # (private key, kid, alg) used for ID tokens
    published: list[dict[str, Any]]
    clock: Clock
    auth_methods: list[str] = field(default_factory=lambda: ["client_secret_post", "client_secret_basic"])
    claims: dict[str, Any] = field(default_factory=dict)  # merged into every ID token
    token_error: dict[str, Any] | None = None
    metadata_override: dict[str, Any] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[httpx.Request] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.issuer.rstrip("/")

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.base + "/authorize",
            "token_endpoint": self.base + "/token",
            "jwks_uri": self.base + "/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": self.auth_methods,
            **self.metadata_override,
        }

    def sign(self, claims: dict[str, Any], key=None, kid=None, alg=None) -> str:
        k, default_kid, default_alg = self.signing
        return jwt.encode(claims, key or k, algorithm=alg or default_alg, headers={"kid": kid or default_kid})

    def id_claims(self, nonce: str = "n", **overrides) -> dict[str, Any]:
        now = int(self.clock())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": "user-123", "iat": now, "nbf": now,
                  "exp": now + 3600, "nonce": nonce, "preferred_username": "alice@example.com",
                  "groups": ["vpn-users"], "amr": ["pwd", "mfa"]}
        claims.update(self.claims)
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def authorize(self, url: str) -> dict[str, str]:
        """The user signs in: returns the callback query."""
        parts = urllib.parse.urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == self.base + "/authorize"
        q = dict(urllib.parse.parse_qsl(parts.query))
        code = f"code-{len(self.codes)}"
        self.codes[code] = q
        return {"code": code, "state": q["state"]}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json=self.metadata())
        if path.endswith("/jwks"):
            return httpx.Response(200, json={"keys": list(self.published)})
        if path.endswith("/token") and request.method == "POST":
            self.token_requests.append(request)
            if self.token_error:
                return httpx.Response(400, json=self.token_error)
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            q = self.codes.pop(form.get("code", ""), None)
            if q is None:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "unknown code"})
            if form.get("grant_type") != "authorization_code" or form.get("redirect_uri") != q["redirect_uri"]:
                return httpx.Response(400, json={"error": "invalid_request"})
            if q["code_challenge_method"] != "S256" or pkce_challenge(form["code_verifier"]) != q["code_challenge"]:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "PKCE failed"})
            token = self.sign(self.id_claims(nonce=q["nonce"]))
            return httpx.Response(200, json={"access_token": "at", "token_type": "Bearer", "id_token": token})
        return httpx.Response(404)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def idp(rsa_keys, clock):
    return FakeIdP(ISSUER, (rsa_keys[0], "k1", "RS256"), [public_jwk(rsa_keys[0], "k1")], clock)


def make_provider(idp: FakeIdP, clock: Clock, transport=None, **settings) -> OidcProvider:
    values = {"issuer": ISSUER, "client_id": CLIENT_ID, **settings}
    client = httpx.AsyncClient(transport=transport or httpx.MockTransport(idp.handler))
    return OidcProvider(OidcSettings(**values), REDIRECT, http=client, clock=clock)


async def sign_in(provider: OidcProvider, idp: FakeIdP, pending_id: str = "p1"):
    await provider.ensure_discovered()
    request = provider.begin(pending_id)
    return await provider.handle_callback(idp.authorize(request.url))


async def validate(provider: OidcProvider, token: str, nonce: str = "n"):
    await provider.ensure_discovered()
    return await provider.validate_id_token(token, nonce)


def refused(provider: OidcProvider, token: str, nonce: str = "n") -> OidcError:
    with pytest.raises(OidcError) as info:
        run(validate(provider, token, nonce))
    return info.value


# ---------------------------------------------------------------------------- flow


def test_pkce_rfc7636_vector():
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_authorization_url_parameters(idp, clock):
    provider = make_provider(idp, clock, scopes=["openid", "profile", "email", "offline_access"])
    run(provider.ensure_discovered())
    request = provider.begin("p1", login_hint="alice@example.com", prompt="select_account")
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["redirect_uri"] == REDIRECT
    assert q["scope"] == "openid profile email offline_access"
    assert q["state"] == request.state and q["nonce"] == request.nonce
    assert q["code_challenge_method"] == "S256" and q["code_challenge"] == pkce_challenge(request.code_verifier)
    assert q["login_hint"] == "alice@example.com" and q["prompt"] == "select_account"
    assert len(base64.urlsafe_b64decode(request.state + "==")) >= 16  # >= 128 bits
    assert 43 <= len(request.code_verifier) <= 128
    assert set(request.code_verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    other = provider.begin("p2")
    assert len({request.state, request.nonce, request.code_verifier, other.state, other.nonce}) == 5
    assert request.created == T0 and request.expires == T0 + provider.settings.sign_in_timeout
    assert request.pending_id == "p1" and "state" not in repr(request).replace("AuthorizationRequest", "")


def test_happy_path_public_client_with_pkce_and_nonce(idp, clock):
    provider = make_provider(idp, clock, allowed_groups=["vpn-users"], required_amr=["mfa"])
    request, identity = run(sign_in(provider, idp))
    assert request.pending_id == "p1"
    assert identity.username == "alice@example.com" and identity.subject == "user-123"
    assert identity.groups == ["vpn-users"] and identity.amr == ["pwd", "mfa"]
    assert identity.claims["iss"] == ISSUER and not identity.groups_overage
    form = dict(urllib.parse.parse_qsl(idp.token_requests[0].content.decode()))
    assert form["client_id"] == CLIENT_ID and "client_secret" not in form  # public client: PKCE only
    assert "authorization" not in idp.token_requests[0].headers
    assert idp.hits[urllib.parse.urlsplit(ISSUER).path + "/.well-known/openid-configuration"] == 1
    assert len(provider.pending) == 0


def test_confidential_client_post_and_basic(idp, clock):
    provider = make_provider(idp, clock, client_secret="s3cr:t&")
    run(sign_in(provider, idp))
    form = dict(urllib.parse.parse_qsl(idp.token_requests[-1].content.decode()))
    assert form["client_secret"] == "s3cr:t&" and form["client_id"] == CLIENT_ID

    idp.auth_methods = ["client_secret_basic"]
    provider = make_provider(idp, clock, client_secret="s3cr:t&")
    run(sign_in(provider, idp))
    req = idp.token_requests[-1]
    form = dict(urllib.parse.parse_qsl(req.content.decode()))
    assert "client_secret" not in form
    user, _, password = base64.b64decode(req.headers["authorization"].split()[1]).decode().partition(":")
    assert urllib.parse.unquote_plus(user) == CLIENT_ID and urllib.parse.unquote_plus(password) == "s3cr:t&"


def test_ec_key_es256(idp, clock, ec_key):
    idp.signing = (ec_key, "ec1", "ES256")
    idp.published = [public_jwk(ec_key, "ec1")]
    provider = make_provider(idp, clock)
    _, identity = run(sign_in(provider, idp))
    assert identity.username == "alice@example.com"


def test_idp_token_error_invalid_grant(idp, clock):
    idp.token_error = {"error": "invalid_grant",
                       "error_description": "AADSTS70008: The provided authorization code has expired."}
    provider = make_provider(idp, clock)
    with pytest.raises(OidcError) as info:
        run(sign_in(provider, idp))
    assert "invalid_grant" in str(info.value) and "AADSTS70008" in str(info.value)
    assert info.value.pending_id == "p1" and info.value.code == "token_error"


def test_user_cancelled_at_idp(idp, clock):
    provider = make_provider(idp, clock)
    run(provider.ensure_discovered())
    request = provider.begin("p7")
    with pytest.raises(OidcError) as info:
        run(provider.handle_callback({"state": request.state, "error": "access_denied",
                                      "error_description": "the user canceled the authentication"}))
    assert "cancelled" in str(info.value) and info.value.pending_id == "p7"
    assert not idp.token_requests


def test_callback_iss_parameter_must_match(idp, clock):
    provider = make_provider(idp, clock)
    run(provider.ensure_discovered())
    params = idp.authorize(provider.begin("p1").url)
    with pytest.raises(OidcError, match="wrong identity provider"):
        run(provider.handle_callback({**params, "iss": "https://evil.example.test"}))


def test_replayed_state_is_single_use(idp, clock):
    provider = make_provider(idp, clock)
    run(provider.ensure_discovered())
    params = idp.authorize(provider.begin("p1").url)
    run(provider.handle_callback(params))
    with pytest.raises(OidcError) as info:
        run(provider.handle_callback(params))
    assert info.value.code == "state" and info.value.pending_id is None
    assert len(idp.token_requests) == 1
    with pytest.raises(OidcError, match="unknown or already used"):
        run(provider.handle_callback({"state": "forged", "code": "x"}))


def test_expired_pending_sign_in(idp, clock):
    provider = make_provider(idp, clock, sign_in_timeout=60)
    run(provider.ensure_discovered())
    params = idp.authorize(provider.begin("p9").url)
    clock.t += 61
    with pytest.raises(OidcError) as info:
        run(provider.handle_callback(params))
    assert info.value.code == "expired" and info.value.pending_id == "p9" and "expired" in str(info.value)
    assert not idp.token_requests


def test_sign_in_expires_with_the_pending_vpn_session(idp, clock):
    provider = make_provider(idp, clock, sign_in_timeout=300)
    run(provider.ensure_discovered())
    request = provider.begin("p1", not_after=T0 + 45)
    assert request.expires == T0 + 45
    params = idp.authorize(request.url)
    clock.t += 46
    with pytest.raises(OidcError, match="expired"):
        run(provider.handle_callback(params))
    assert provider.begin("p2", not_after=T0 + 10_000).expires == clock.t + 300


def _request(state: str, pending_id: str, created: float = T0, ttl: float = 300) -> AuthorizationRequest:
    return AuthorizationRequest(url="u", state=state, nonce="n", code_verifier="v" * 43, created=created,
                                pending_id=pending_id, expires=created + ttl)


def test_pending_sign_ins_store():
    store = PendingSignIns(300, max_entries=3, max_per_pending_id=2)
    store.add(_request("s1", "a"), T0)
    assert store.take("s1", T0 + 1).pending_id == "a"
    assert store.take("s1", T0 + 2) is None  # single use: a replay gets nothing
    store.add(_request("s2", "a"), T0)
    assert store.take("s2", T0 + 301) is None  # expired
    # per pending id: a reload replaces the oldest state; globally bounded
    for i, pid in enumerate(["b", "b", "b", "c", "d"]):
        store.add(_request(f"x{i}", pid, created=T0 + i), T0 + i)
    assert len(store) == 3
    assert store.take("x0", T0 + 5) is None and store.take("x1", T0 + 5) is None
    assert store.take("x4", T0 + 5).pending_id == "d"
    store.add(_request("y", "c", created=T0 + 6), T0 + 6)
    assert store.discard("c") == 2 and len(store) == 1
    assert store.expire(T0 + 10_000) == 1 and len(store) == 0


# ---------------------------------------------------------------------------- ID token validation


def test_wrong_audience(idp, clock):
    provider = make_provider(idp, clock)
    assert refused(provider, idp.sign(idp.id_claims(aud="someone-else"))).code == "audience"
    assert "audience mismatch" in str(refused(provider, idp.sign(idp.id_claims(aud=["a", "b"]))))
    # custom audience setting
    provider = make_provider(idp, clock, audience="api://vpn")
    assert run(validate(provider, idp.sign(idp.id_claims(aud=["api://vpn", CLIENT_ID], azp=CLIENT_ID))))
    assert refused(provider, idp.sign(idp.id_claims(aud="api://vpn2"))).code == "audience"


def test_azp_checked_with_several_audiences(idp, clock):
    provider = make_provider(idp, clock)
    assert run(validate(provider, idp.sign(idp.id_claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))))
    error = refused(provider, idp.sign(idp.id_claims(aud=[CLIENT_ID, "other"], azp="other")))
    assert "azp" in str(error)


def test_wrong_issuer(idp, clock):
    provider = make_provider(idp, clock)
    error = refused(provider, idp.sign(idp.id_claims(iss="https://evil.example.test")))
    assert str(error) == "token issuer mismatch" and "evil" in error.detail
    assert refused(provider, idp.sign(idp.id_claims(iss=ISSUER + "/"))).code == "issuer"  # exact match


def test_time_claims(idp, clock):
    provider = make_provider(idp, clock, leeway=60)
    now = int(clock())
    assert str(refused(provider, idp.sign(idp.id_claims(exp=now - 61)))) == "token expired"
    assert run(validate(provider, idp.sign(idp.id_claims(exp=now - 59))))  # within leeway
    assert refused(provider, idp.sign(idp.id_claims(nbf=now + 120))).code == "not_yet_valid"
    assert "future" in str(refused(provider, idp.sign(idp.id_claims(iat=now + 120, nbf=None))))
    assert "no exp" in str(refused(provider, idp.sign(idp.id_claims(exp=None))))
    assert "no iat" in str(refused(provider, idp.sign(idp.id_claims(iat=None))))
    assert "not a number" in str(refused(provider, idp.sign(idp.id_claims(exp="tomorrow"))))


def test_nonce(idp, clock):
    provider = make_provider(idp, clock)
    assert refused(provider, idp.sign(idp.id_claims(nonce="other")), nonce="n").code == "nonce"
    assert refused(provider, idp.sign(idp.id_claims(nonce=None)), nonce="n").code == "nonce"


def test_bad_signature_other_key(idp, clock, rsa_keys):
    provider = make_provider(idp, clock)
    forged = idp.sign(idp.id_claims(), key=rsa_keys[2], kid="k1")
    error = refused(provider, forged)
    assert error.code == "signature" and "signature is invalid" in str(error)
    # payload tampering
    head, body, sig = idp.sign(idp.id_claims()).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "admin"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refused(provider, f"{head}.{body}.{sig}").code == "signature"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_and_hs256_with_public_key_refused(idp, clock, rsa_keys):
    provider = make_provider(idp, clock)
    claims = idp.id_claims()
    none_token = f"{_b64({'alg': 'none', 'kid': 'k1'})}.{_b64(claims)}."
    assert refused(provider, none_token).code == "algorithm"
    pem = rsa_keys[0].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64({'alg': 'HS256', 'kid': 'k1', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert refused(provider, f"{signing_input}.{mac.decode()}").code == "algorithm"
    # an RSA key announced as ES256
    signing_input = f"{_b64({'alg': 'ES256', 'kid': 'k1'})}.{_b64(claims)}"
    assert refused(provider, f"{signing_input}.AAAA").code == "algorithm"
    assert refused(provider, "not-a-jwt").code == "malformed"


def test_unknown_kid_refetches_once_then_rate_limited(idp, clock, rsa_keys):
    provider = make_provider(idp, clock)
    assert run(validate(provider, idp.sign(idp.id_claims())))
    assert idp.hits["/realms/vpn/jwks"] == 1
    # the IdP rotates to a new key: one refetch finds it
    idp.published = [public_jwk(rsa_keys[0], "k1"), public_jwk(rsa_keys[1], "k2")]
    clock.t += 120
    identity = run(validate(provider, idp.sign(idp.id_claims(), key=rsa_keys[1], kid="k2")))
    assert identity.subject == "user-123" and idp.hits["/realms/vpn/jwks"] == 2
    assert run(validate(provider, idp.sign(idp.id_claims(), key=rsa_keys[1], kid="k2")))
    assert idp.hits["/realms/vpn/jwks"] == 2  # cached
    # random kids inside the rate limit: refused without asking the IdP again
    for i in range(5):
        clock.t += 5
        error = refused(provider, idp.sign(idp.id_claims(), key=rsa_keys[2], kid=f"random{i}"))
        assert error.code == "unknown_key"
    assert idp.hits["/realms/vpn/jwks"] == 2
    clock.t += 60
    refused(provider, idp.sign(idp.id_claims(), key=rsa_keys[2], kid="random-late"))
    assert idp.hits["/realms/vpn/jwks"] == 3
    # TTL: an hour later the set is fetched again even for a known kid
    clock.t += 3600
    assert run(validate(provider, idp.sign(idp.id_claims())))
    assert idp.hits["/realms/vpn/jwks"] == 4


def test_jwks_cache_filters_keys(rsa_keys, ec_key):
    cache = JwksCache(ttl=3600, min_refetch=60)
    cache.load({"keys": [public_jwk(rsa_keys[0], "sig1"),
                         {**public_jwk(rsa_keys[1], "enc1"), "use": "enc"},
                         {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                         public_jwk(ec_key, "ec1")]}, T0)
    assert set(cache.keys) == {"sig1", "ec1"} and cache.get(None) is None
    assert not cache.stale(T0 + 10) and cache.stale(T0 + 3600)
    with pytest.raises(OidcError):
        cache.load({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, T0)
    with pytest.raises(OidcError):
        cache.load(["not", "a", "jwks"], T0)


def test_missing_mfa(idp, clock):
    provider = make_provider(idp, clock, required_amr=["mfa"])
    error = refused(provider, idp.sign(idp.id_claims(amr=["pwd"])))
    assert str(error) == "multi-factor authentication required" and error.code == "mfa"
    refused(provider, idp.sign(idp.id_claims(amr=None)))
    assert run(validate(provider, idp.sign(idp.id_claims(amr=["pwd", "otp", "mfa"]))))
    provider = make_provider(idp, clock, required_amr=["hwk"])
    assert "hwk required" in str(refused(provider, idp.sign(idp.id_claims())))


def test_not_in_allowed_group(idp, clock):
    provider = make_provider(idp, clock, allowed_groups=["vpn-admins", "vpn-staff"])
    error = refused(provider, idp.sign(idp.id_claims(groups=["sales"])))
    assert str(error) == "user is not in an allowed group" and error.code == "groups"
    refused(provider, idp.sign(idp.id_claims(groups=None)))
    identity = run(validate(provider, idp.sign(idp.id_claims(groups=["sales", "vpn-staff"]))))
    assert identity.groups == ["sales", "vpn-staff"]
    provider = make_provider(idp, clock, allowed_groups=["vpn"], group_claim="roles")
    assert run(validate(provider, idp.sign(idp.id_claims(roles=["vpn"], groups=None)))).groups == ["vpn"]


def test_group_overage(idp, clock):
    overage = {"groups": None, "_claim_names": {"groups": "src1"},
               "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}
    provider = make_provider(idp, clock, allowed_groups=["vpn-users"])
    error = refused(provider, idp.sign(idp.id_claims(**overage)))
    assert error.code == "groups_overage" and "overage" in str(error) and "app registration" in str(error)
    # without a group restriction the sign-in works, and the identity says groups are incomplete
    identity = run(validate(make_provider(idp, clock), idp.sign(idp.id_claims(**overage))))
    assert identity.groups == [] and identity.groups_overage


def test_username_fallbacks(idp, clock):
    provider = make_provider(idp, clock)
    assert run(validate(provider, idp.sign(idp.id_claims(preferred_username=None, upn="a@corp"))))\
        .username == "a@corp"
    assert run(validate(provider, idp.sign(idp.id_claims(preferred_username=None, email="e@x")))).username == "e@x"
    assert run(validate(provider, idp.sign(idp.id_claims(preferred_username=None)))).username == "user-123"
    provider = make_provider(idp, clock, username_claim="email")
    assert run(validate(provider, idp.sign(idp.id_claims(email="e@x")))).username == "e@x"


# ---------------------------------------------------------------------------- Entra specifics


def entra_idp(rsa_keys, clock, tenant_segment: str, issuer_in_metadata: str) -> FakeIdP:
    idp = FakeIdP(f"https://login.microsoftonline.com/{tenant_segment}/v2.0", (rsa_keys[0], "k1", "RS256"),
                  [public_jwk(rsa_keys[0], "k1")], clock)
    idp.metadata_override = {"issuer": issuer_in_metadata}
    return idp


def test_entra_tenant_defaults_and_tid(rsa_keys, clock):
    v2 = f"https://login.microsoftonline.com/{TENANT}/v2.0"
    idp = entra_idp(rsa_keys, clock, TENANT, v2)
    provider = OidcProvider(OidcSettings(client_id=CLIENT_ID, tenant_id=TENANT), REDIRECT, clock=clock,
                            http=httpx.AsyncClient(transport=httpx.MockTransport(idp.handler)))
    assert provider.discovery_url == f"{v2}/.well-known/openid-configuration"
    assert run(validate(provider, idp.sign(idp.id_claims(iss=v2, tid=TENANT)))).tenant_id == TENANT
    # v1 issuer form of the same tenant is accepted
    assert run(validate(provider, idp.sign(idp.id_claims(iss=f"https://sts.windows.net/{TENANT}/", tid=TENANT))))
    other = "9188040d-6c67-4c5b-b112-36a304b66dad"
    error = refused(provider, idp.sign(idp.id_claims(iss=v2, tid=other)))
    assert error.code == "tenant" and "another Entra tenant" in str(error)
    assert refused(provider, idp.sign(idp.id_claims(iss=v2, tid=None))).code == "tenant"
    assert refused(provider, idp.sign(idp.id_claims(iss=f"https://login.microsoftonline.com/{other}/v2.0",
                                                    tid=TENANT))).code == "issuer"


def test_entra_multi_tenant_issuer_template(rsa_keys, clock):
    idp = entra_idp(rsa_keys, clock, "organizations", "https://login.microsoftonline.com/{tenantid}/v2.0")
    provider = make_provider(idp, clock, issuer="https://login.microsoftonline.com/organizations/v2.0",
                             tenant_id="organizations")
    run(provider.ensure_discovered())
    assert run(validate(provider, idp.sign(idp.id_claims(iss=f"https://login.microsoftonline.com/{TENANT}/v2.0",
                                                         tid=TENANT))))
    other = "9188040d-6c67-4c5b-b112-36a304b66dad"
    assert refused(provider, idp.sign(idp.id_claims(iss=f"https://login.microsoftonline.com/{TENANT}/v2.0",
                                                    tid=other))).code == "issuer"
    # a single-tenant issuer never matches a template
    with pytest.raises(OidcError, match="issuer mismatch"):
        parse_metadata({**idp.metadata(), "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"},
                       f"https://login.microsoftonline.com/{TENANT}/v2.0")


# ---------------------------------------------------------------------------- the IdP and its configuration


def test_idp_unreachable(idp, clock):
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    provider = make_provider(idp, clock, transport=httpx.MockTransport(down))
    with pytest.raises(OidcError) as info:
        run(provider.discover())
    assert str(info.value).startswith("identity provider unreachable") and "Connection refused" in str(info.value)
    assert info.value.code == "unreachable"
    with pytest.raises(OidcError, match="unreachable"):
        provider.begin("p1")  # nothing discovered: the page must show the error, not a half flow


def test_idp_unreachable_after_discovery_on_token_and_jwks(idp, clock):
    state = {"down": False}

    def flaky(request: httpx.Request) -> httpx.Response:
        if state["down"]:
            raise httpx.ConnectTimeout("timed out", request=request)
        return idp.handler(request)

    provider = make_provider(idp, clock, transport=httpx.MockTransport(flaky))
    run(provider.ensure_discovered())
    params = idp.authorize(provider.begin("p3").url)
    state["down"] = True
    with pytest.raises(OidcError) as info:
        run(provider.handle_callback(params))
    assert "unreachable" in str(info.value) and info.value.pending_id == "p3"


@pytest.mark.parametrize("response", [httpx.Response(500, text="oops"), httpx.Response(200, text="<html>"),
                                      httpx.Response(200, json=["x"])])
def test_discovery_bad_responses(idp, clock, response):
    provider = make_provider(idp, clock, transport=httpx.MockTransport(lambda request: response))
    with pytest.raises(OidcError, match="^identity provider unreachable: "):
        run(provider.discover())


def test_discovery_checks(idp, clock):
    idp.metadata_override = {"issuer": "https://other.example.test"}
    with pytest.raises(OidcError, match="issuer mismatch"):
        run(make_provider(idp, clock).discover())
    idp.metadata_override = {"token_endpoint": "http://idp.example.test/token"}
    with pytest.raises(OidcError, match="https"):
        run(make_provider(idp, clock).discover())
    idp.metadata_override = {"code_challenge_methods_supported": ["plain"]}
    with pytest.raises(OidcError, match="PKCE"):
        run(make_provider(idp, clock).discover())
    idp.metadata_override = {"jwks_uri": None}
    with pytest.raises(OidcError, match="jwks_uri"):
        run(make_provider(idp, clock).discover())


def test_http_issuer_refused(idp, clock):
    with pytest.raises(ValidationError):
        OidcSettings(issuer="http://idp.example.test", client_id=CLIENT_ID)
    settings = OidcSettings.model_construct(**{**OidcSettings().model_dump(), "issuer": "http://idp.example.test",
                                               "client_id": CLIENT_ID})
    with pytest.raises(OidcError, match="https"):
        OidcProvider(settings, REDIRECT, http=httpx.AsyncClient(transport=httpx.MockTransport(idp.handler)))
    with pytest.raises(OidcError, match="issuer"):
        OidcProvider(OidcSettings(client_id=CLIENT_ID), REDIRECT)
    with pytest.raises(OidcError, match="client id"):
        OidcProvider(OidcSettings(issuer=ISSUER), REDIRECT)


def test_ca_file(tmp_path, idp, clock):
    with pytest.raises(OidcError, match="CA file"):
        OidcProvider(OidcSettings(issuer=ISSUER, client_id=CLIENT_ID, ca_file=str(tmp_path / "missing.pem")),
                     REDIRECT)
    provider = OidcProvider(OidcSettings(issuer=ISSUER, client_id=CLIENT_ID), REDIRECT)
    run(provider.aclose())


def test_check_claims_is_pure():
    settings = OidcSettings(issuer=ISSUER, client_id=CLIENT_ID, leeway=0)
    claims = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "s", "iat": T0, "exp": T0 + 10, "nonce": "n"}
    assert check_id_token_claims(dict(claims), settings=settings, nonce="n", now=T0 + 10).username == "s"
    with pytest.raises(OidcError, match="expired"):
        check_id_token_claims(dict(claims), settings=settings, nonce="n", now=T0 + 11)
