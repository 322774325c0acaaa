"""Browser sign-in (OIDC, WEB_AUTH) with the real openvpn client, a real identity provider
(npm oidc-provider with its own login pages and TOTP) and a real browser (Chromium/Playwright)."""

from __future__ import annotations

import re
import signal
import time

import pytest

from bench.run import handshake_seconds

from .gateway_fixture import RunningGateway, init_gateway, single_transport_profile
from .lab import wait_until
from .oidc_lab import CAROL_TOTP_SECRET, OidcProvider, browser_login, lab_http

WEB_AUTH = re.compile(r"WEB_AUTH::(https://\S+?)['\s]")


def oidc_gateway(lab, idp: OidcProvider, *extra: str, **config) -> tuple[RunningGateway, object]:
    gw = init_gateway(lab, "--auth", "oidc", "--oidc-issuer", idp.issuer, "--oidc-client-id", idp.client_id,
                      "--oidc-ca-file", str(idp.ca_cert_path), *extra)
    cert, key = idp.ca.issue("gateway-web", ips=[lab.gw_client_ip])  # a certificate the browser trusts
    gw.edit_config(web__certificate_file=str(cert), web__key_file=str(key), **config)
    profile = lab.workdir / "sso.ovpn"
    gw.cli("profile", "--type", "openvpn", "-o", str(profile))
    assert "IV_SSO webauth" in profile.read_text()
    return gw, single_transport_profile(profile, "udp")


def web_auth_url(client, timeout: float = 20) -> str:
    wait_until(lambda: WEB_AUTH.search(client.log_text()), timeout, what="WEB_AUTH URL at the client")
    url = WEB_AUTH.search(client.log_text()).group(1)
    assert len(url) < 100, url  # stock clients drop URLs over ~240 characters
    return url


def sign_in(lab, idp, url: str, user: str, password: str, **kwargs) -> dict:
    return browser_login(lab, lab.clients[0], url, user, password, ca_files=[idp.ca_cert_path], **kwargs)


def test_browser_sign_in_reaches_vnet_and_renegotiates_without_browser(make_lab):
    lab = make_lab(1, extra_pools=("172.16.210.0/24",))
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp, "--oidc-allowed-group", "vpn-users", openvpn__reneg_sec=8)
    gw.edit_config(policy_groups=[{"name": "engineering", "address_pools": ["172.16.210.0/24"],
                                   "oidc_groups": ["engineering"]}])
    gw.start()
    started = time.monotonic()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    url = web_auth_url(client)
    assert url.startswith(f"https://{lab.gw_client_ip}/a/")
    result = sign_in(lab, idp, url, "alice", "alice-pass")
    assert result["ok"], result
    assert "You are signed in" in result["text"]
    vip = client.wait_connected(timeout=30)
    print(f"client start to tunnel up through the browser: {time.monotonic() - started:.2f} s "
          f"(client's own clock: {handshake_seconds(client.log_text()):.2f} s, browser {result['elapsed']:.2f} s)")
    assert vip.startswith("172.16.210."), vip  # the groups claim picked the engineering policy group
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=3)
    [session] = gw.sessions()
    assert session["identity"] == "alice" and session["auth_method"] == "oidc"
    # renegotiations present the auth-token: no second WEB_AUTH, the tunnel stays up
    wait_until(lambda: gw.log_text().count("openvpn.renegotiated") >= 2, 30, what="two renegotiations")
    assert len(WEB_AUTH.findall(client.log_text())) == 1
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    assert [s["id"] for s in gw.sessions()] == [session["id"]]
    # a reconnect (network change, SIGUSR1) also uses the token: no browser, same address
    client.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: [s["id"] for s in gw.sessions()] not in ([], [session["id"]]), 30, what="reconnect")
    assert client.wait_connected(timeout=30) == vip
    assert len(WEB_AUTH.findall(client.log_text())) == 1
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)


def test_totp_user_with_required_mfa(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp, oidc__required_amr=["otp"])
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    result = sign_in(lab, idp, web_auth_url(client), "carol", "carol-pass",
                     totp_secret=CAROL_TOTP_SECRET)
    assert result["ok"] and result["steps"] == ["login", "otp"], result
    client.wait_connected(timeout=30)
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)


def _refused(client, needle: str, timeout: float = 30) -> str:
    wait_until(lambda: "AUTH_FAILED" in client.log_text(), timeout, what="AUTH_FAILED at the client")
    text = client.log_text()
    assert needle in text, text[-2000:]
    return text


def test_missing_mfa_is_refused(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp, oidc__required_amr=["otp"])
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    result = sign_in(lab, idp, web_auth_url(client), "alice", "alice-pass")
    assert "Sign-in failed" in result["text"]
    _refused(client, "otp required")
    assert gw.sessions() == []


def test_user_outside_allowed_groups_is_refused(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp, "--oidc-allowed-group", "vpn-users")
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    sign_in(lab, idp, web_auth_url(client), "bob", "bob-pass")
    _refused(client, "not in an allowed group")
    assert "oidc.sign_in_refused" in gw.log_text()


def test_wrong_password_then_cancel(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp)
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    url = web_auth_url(client)
    wrong = sign_in(lab, idp, url, "alice", "not-her-password")
    assert wrong["outcome"] == "login_error" and not wrong["ok"]
    assert "Initialization Sequence Completed" not in client.log_text()
    # the link is single use: a new browser attempt on it is refused, the client still waits
    again = lab_http(lab, lab.clients[0], "GET", url, verify=str(idp.ca_cert_path))
    assert again["status"] == 409
    gw.stop()  # a new client connection for the cancel case
    gw.start()
    client.stop()
    client = lab.start_openvpn_client(lab.clients[0], profile, name="cancel")
    cancelled = sign_in(lab, idp, web_auth_url(client), "alice", "alice-pass", cancel=True)
    assert "cancelled" in cancelled["text"], cancelled
    _refused(client, "cancelled")


def test_replayed_callback_and_unknown_link(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp)
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    result = sign_in(lab, idp, web_auth_url(client), "alice", "alice-pass")
    assert result["ok"]
    client.wait_connected(timeout=30)
    callback = next(n for n in result["navigations"] if "/oidc/callback?" in n)
    replay = lab_http(lab, lab.clients[0], "GET", callback, verify=str(idp.ca_cert_path))
    assert replay["status"] == 400 and "already used" in replay["text"], replay
    unknown = lab_http(lab, lab.clients[0], "GET", f"https://{lab.gw_client_ip}/a/AAAAAAAAAAAAAAAAAAAAAA",
                       verify=str(idp.ca_cert_path))
    assert unknown["status"] == 404
    assert len(gw.sessions()) == 1


def test_identity_provider_down(make_lab):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp)
    gw.start()
    idp.stop()
    client = lab.start_openvpn_client(lab.clients[0], profile)
    page = lab_http(lab, lab.clients[0], "GET", web_auth_url(client), verify=str(idp.ca_cert_path))
    assert page["status"] == 502 and "unreachable" in page["text"]
    _refused(client, "unreachable")
    assert gw.sessions() == []


@pytest.mark.parametrize("missing", ["webauth"])
def test_client_without_web_auth_support_gets_a_clear_refusal(make_lab, missing):
    lab = make_lab(1)
    idp = OidcProvider(lab).start()
    gw, profile = oidc_gateway(lab, idp)
    text = profile.read_text().replace("setenv IV_SSO webauth,openurl,crtext\n", "")
    plain = lab.workdir / "no-sso.ovpn"
    plain.write_text(text)
    gw.start()
    client = lab.start_openvpn_client(lab.clients[0], plain)
    _refused(client, "web browser")

