"""The lab's OIDC provider and browser work: checked with a relying party written here, no p2sgw code involved.

The IdP (npm oidc-provider, tests/e2e/idp/idp.mjs) runs in its own namespace on the client segment
(192.0.2.2); the browser (Debian Chromium + Playwright, tests/e2e/idp/browser_login.py) runs in c0; the
redirect URI is a tiny HTTPS recorder in c0 (192.0.2.10:8443); the code is exchanged from the gw namespace,
where the gateway will do it. A failure here points at the fixture (tests/e2e/oidc_lab.py) or the machine.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse

import jwt
import pyotp
import pytest

from .lab import Lab
from .oidc_lab import (
    CAROL_TOTP_SECRET,
    DEFAULT_REDIRECT_URI,
    IDP_IP,
    CallbackRecorder,
    OidcClient,
    OidcProvider,
    authorization_url,
    lab_http,
    pkce_pair,
)

ID_TOKEN_TTL = 120
TENANT = "00000000-0000-4000-8000-00000000c0de"
RECORDER_URL = "https://192.0.2.10:8443/callback"
CONFIDENTIAL = OidcClient("p2sgw-confidential", [RECORDER_URL], client_secret="lab-client-secret")


class RelyingParty:
    """The relying party's half of the code flow with PKCE, state and nonce; network calls from `ns`."""

    def __init__(self, idp: OidcProvider, recorder: CallbackRecorder, client: OidcClient, ns: str = "gw") -> None:
        self.idp = idp
        self.recorder = recorder
        self.client = client
        self.ns = ns
        discovery = idp.http(ns, "GET", idp.discovery_url)
        assert discovery["status"] == 200, discovery
        self.metadata = discovery["json"]

    def begin(self, **extra: str) -> dict:
        verifier, challenge = pkce_pair()
        flow = {"state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16), "verifier": verifier}
        flow["url"] = authorization_url(
            self.metadata["authorization_endpoint"], self.client.client_id, self.recorder.url,
            state=flow["state"], nonce=flow["nonce"], code_challenge=challenge, **extra,
        )
        return flow

    def exchange(self, code: str, verifier: str, *, with_secret: bool = True) -> dict:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.recorder.url,
                "code_verifier": verifier}
        auth = None
        if self.client.client_secret and with_secret:
            auth = (self.client.client_id, self.client.client_secret)  # client_secret_basic
        else:
            data["client_id"] = self.client.client_id
        return self.idp.http(self.ns, "POST", self.metadata["token_endpoint"], data=data, auth=auth)

    def jwks(self) -> dict:
        reply = self.idp.http(self.ns, "GET", self.metadata["jwks_uri"])
        assert reply["status"] == 200, reply
        return reply["json"]

    def verify(self, id_token: str, nonce: str) -> dict:
        kid = jwt.get_unverified_header(id_token)["kid"]
        key = jwt.PyJWKSet.from_dict(self.jwks())[kid]
        claims = jwt.decode(
            id_token, key.key, algorithms=["RS256"], audience=self.client.client_id, issuer=self.idp.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "nonce"]},
        )
        assert claims["nonce"] == nonce
        return claims

    def sign_in(self, username: str, password: str, **kwargs) -> tuple[dict, dict, dict]:
        """Browser login, then the callback's query and the token response: (browser, callback, tokens)."""
        flow = self.begin()
        seen = len(self.recorder.requests())
        browser = self.idp.browser_login("c0", flow["url"], username, password, **kwargs)
        assert browser["ok"], browser
        callback = self.recorder.wait_for_request(count=seen + 1)["query"]
        assert callback["state"] == flow["state"]
        assert callback["iss"] == self.idp.issuer  # RFC 9207
        tokens = self.exchange(callback["code"], flow["verifier"])
        assert tokens["status"] == 200, tokens
        tokens["claims"] = self.verify(tokens["json"]["id_token"], flow["nonce"])
        tokens["flow"] = flow
        tokens["code"] = callback["code"]
        return browser, callback, tokens


@pytest.fixture
def idp(lab: Lab) -> OidcProvider:
    return OidcProvider(
        lab, client_id="p2sgw", redirect_uris=[DEFAULT_REDIRECT_URI, RECORDER_URL], id_token_ttl=ID_TOKEN_TTL,
        extra_claims={"tid": TENANT}, extra_clients=[CONFIDENTIAL],
    )


@pytest.fixture
def recorder(lab: Lab, idp: OidcProvider) -> CallbackRecorder:
    recorder = CallbackRecorder(lab, idp.ca, ns="c0", port=8443).start()
    assert recorder.url == RECORDER_URL
    idp.start()
    return recorder


@pytest.fixture
def rp(idp: OidcProvider, recorder: CallbackRecorder) -> RelyingParty:
    return RelyingParty(idp, recorder, idp.client)


def test_discovery_reachable_from_clients_and_gateway_only(lab: Lab, idp: OidcProvider, rp: RelyingParty) -> None:
    assert idp.issuer == f"https://{IDP_IP}"
    for ns in ("c0", "gw"):
        reply = idp.http(ns, "GET", idp.discovery_url)
        assert reply["status"] == 200, reply
        metadata = reply["json"]
        assert metadata["issuer"] == idp.issuer
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert metadata["response_types_supported"] == ["code"]
        assert {"groups", "tid"} <= set(metadata["claims_supported"])
    assert rp.jwks() == idp.jwks()
    assert [key["kid"] for key in rp.jwks()["keys"]] == [idp.signing_kid]

    untrusted = lab_http(lab, "gw", "GET", idp.discovery_url)  # the system trust store does not know the lab CA
    assert untrusted["status"] is None and "CERTIFICATE_VERIFY_FAILED" in untrusted["error"], untrusted
    from_vnet = idp.http("vnet", "GET", idp.discovery_url, timeout=3)  # VNet hosts reach it only through a tunnel
    assert from_vnet["status"] is None and from_vnet["error"], from_vnet


@pytest.mark.parametrize(
    ("username", "groups"), [("alice", ["vpn-users", "engineering"]), ("bob", ["sales"])]
)
def test_password_sign_in_code_flow(idp: OidcProvider, rp: RelyingParty, username: str, groups: list[str]) -> None:
    browser, _, tokens = rp.sign_in(username, f"{username}-pass")
    assert browser["steps"] == ["login"]
    assert browser["final_url"].startswith(RECORDER_URL + "?code=")
    assert browser["title"] == "Callback received" and browser["status"] == 200
    assert browser["elapsed"] < 30
    claims = tokens["claims"]
    assert claims["sub"] == username
    assert claims["groups"] == groups
    assert claims["amr"] == ["pwd"]
    assert claims["tid"] == TENANT
    assert claims["preferred_username"] == username
    assert claims["exp"] - claims["iat"] == ID_TOKEN_TTL
    assert abs(claims["iat"] - time.time()) < 30
    assert jwt.get_unverified_header(tokens["json"]["id_token"])["kid"] == idp.signing_kid
    assert f"login ok {username} amr pwd" in idp.log_text()

    replay = rp.exchange(tokens["code"], tokens["flow"]["verifier"])  # a code works once
    assert replay["status"] == 400 and replay["json"]["error"] == "invalid_grant", replay


def test_totp_second_factor_reported_in_amr(idp: OidcProvider, rp: RelyingParty) -> None:
    totp = pyotp.TOTP(CAROL_TOTP_SECRET)
    valid = {totp.at(time.time() + delta) for delta in (-30, 0, 30, 60)}
    wrong = next(code for code in (f"{n:06d}" for n in range(1000)) if code not in valid)
    refused = idp.browser_login("c0", rp.begin()["url"], "carol", "carol-pass", totp_code=wrong)
    assert refused["outcome"] == "otp_error", refused
    assert refused["steps"] == ["login", "otp"]
    assert refused["idp_error"] == "Wrong verification code."
    assert refused["final_url"].startswith(f"{idp.issuer}/interaction/")
    assert rp.recorder.requests() == []
    assert "otp failed carol" in idp.log_text()

    browser, _, tokens = rp.sign_in("carol", "carol-pass", totp_secret=CAROL_TOTP_SECRET)
    assert browser["steps"] == ["login", "otp"]
    assert tokens["claims"]["amr"] == ["pwd", "otp"]
    assert tokens["claims"]["groups"] == ["vpn-users"]


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong-pass"), ("mallory", "alice-pass")])
def test_wrong_password_stays_on_login_page(idp: OidcProvider, rp: RelyingParty, username: str, password: str) -> None:
    mark = idp.log_mark()
    result = idp.browser_login("c0", rp.begin()["url"], username, password)
    assert result["outcome"] == "login_error", result
    assert result["idp_error"] == "Wrong username or password."
    assert result["final_url"].startswith(f"{idp.issuer}/interaction/") and result["final_url"].endswith("/login")
    assert result["status"] == 200
    assert not any(url.startswith(RECORDER_URL) for url in result["navigations"])
    assert rp.recorder.requests() == []
    assert "login failed" in idp.log_text(since=mark)


@pytest.mark.parametrize(("username", "cancel"), [("alice", "login"), ("carol", "otp")])
def test_cancel_returns_access_denied(idp: OidcProvider, rp: RelyingParty, username: str, cancel: str) -> None:
    flow = rp.begin()
    result = idp.browser_login("c0", flow["url"], username, f"{username}-pass", cancel=cancel)
    assert result["ok"], result
    assert result["steps"][-1] == "cancel"
    query = rp.recorder.wait_for_request()["query"]
    assert query["error"] == "access_denied", query
    assert query["state"] == flow["state"]
    assert "code" not in query
    assert "interaction aborted by the user" in idp.log_text()


def test_pkce_and_registered_redirect_uris_enforced(idp: OidcProvider, rp: RelyingParty) -> None:
    flow = rp.begin()
    no_pkce = authorization_url(rp.metadata["authorization_endpoint"], "p2sgw", RECORDER_URL,
                                state=flow["state"], nonce=flow["nonce"], code_challenge=None)
    reply = idp.http("c0", "GET", no_pkce)
    assert reply["status"] in (302, 303), reply
    location = urllib.parse.urlsplit(reply["headers"]["location"])
    assert location.geturl().startswith(RECORDER_URL)
    query = dict(urllib.parse.parse_qsl(location.query))
    assert query["error"] == "invalid_request" and "PKCE" in query["error_description"], query

    unregistered = flow["url"].replace(urllib.parse.quote(RECORDER_URL, safe=""),
                                       urllib.parse.quote("https://192.0.2.10:9999/cb", safe=""))
    reply = idp.http("c0", "GET", unregistered)
    assert reply["status"] == 400 and "redirect_uri" in reply["text"], reply

    # The default registration is the gateway's callback, for the gateway's own tests.
    gateway_flow = authorization_url(rp.metadata["authorization_endpoint"], "p2sgw", DEFAULT_REDIRECT_URI,
                                     state="s", nonce="n", code_challenge=pkce_pair()[1])
    reply = idp.http("c0", "GET", gateway_flow)
    assert reply["status"] in (302, 303) and "/interaction/" in reply["headers"]["location"], reply

    # A wrong code_verifier gets nothing.
    browser = idp.browser_login("c0", flow["url"], "alice", "alice-pass")
    assert browser["ok"], browser
    code = rp.recorder.wait_for_request()["query"]["code"]
    wrong = rp.exchange(code, pkce_pair()[0])
    assert wrong["status"] == 400 and wrong["json"]["error"] == "invalid_grant", wrong


def test_confidential_client_needs_its_secret(idp: OidcProvider, recorder: CallbackRecorder) -> None:
    rp = RelyingParty(idp, recorder, CONFIDENTIAL)
    flow = rp.begin()
    assert idp.browser_login("c0", flow["url"], "alice", "alice-pass")["ok"]
    code = recorder.wait_for_request()["query"]["code"]
    anonymous = rp.exchange(code, flow["verifier"], with_secret=False)
    assert anonymous["status"] == 401 and anonymous["json"]["error"] == "invalid_client", anonymous
    _, _, tokens = rp.sign_in("alice", "alice-pass")
    assert tokens["claims"]["aud"] == CONFIDENTIAL.client_id


def test_browser_verifies_the_idp_certificate(lab: Lab, idp: OidcProvider, rp: RelyingParty) -> None:
    from .oidc_lab import browser_login

    untrusted = browser_login(lab, "c0", rp.begin()["url"], "alice", "alice-pass", timeout=30)
    assert not untrusted["ok"] and untrusted["outcome"] == "navigation_error", untrusted
    assert "ERR_CERT_AUTHORITY_INVALID" in untrusted["error"], untrusted

    ignoring = browser_login(lab, "c0", rp.begin()["url"], "alice", "alice-pass", ignore_https_errors=True)
    assert ignoring["ok"], ignoring
    assert rp.recorder.wait_for_request()["query"]["code"]


def test_stop_start_and_silence(idp: OidcProvider, rp: RelyingParty) -> None:
    kid = idp.signing_kid
    idp.stop()
    assert not idp.running
    down = idp.http("gw", "GET", idp.discovery_url, timeout=3)
    assert down["status"] is None and "ConnectError" in down["error"], down  # refused at once

    idp.start()
    _, _, tokens = rp.sign_in("alice", "alice-pass")  # same issuer, CA and keys after a restart
    assert jwt.get_unverified_header(tokens["json"]["id_token"])["kid"] == kid

    idp.silence()
    started = time.monotonic()
    hung = idp.http("gw", "GET", idp.discovery_url, timeout=2)
    assert hung["status"] is None and "Timeout" in hung["error"], hung
    assert time.monotonic() - started >= 1.5
    idp.unsilence()
    assert idp.http("gw", "GET", idp.discovery_url)["status"] == 200


def test_signing_key_rotation(idp: OidcProvider, rp: RelyingParty) -> None:
    old = idp.signing_kid
    new = idp.rotate_signing_key()
    assert new != old and idp.signing_kid == new and idp.running
    assert [key["kid"] for key in rp.jwks()["keys"]] == [new, old]
    _, _, tokens = rp.sign_in("alice", "alice-pass")
    assert jwt.get_unverified_header(tokens["json"]["id_token"])["kid"] == new

    idp.rotate_signing_key(keep_old=False)
    assert [key["kid"] for key in rp.jwks()["keys"]] == [idp.signing_kid]
