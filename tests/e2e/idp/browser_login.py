#!/usr/bin/env python3
"""Sign in through the lab IdP's pages with a real headless Chromium (Debian's), driven by Playwright.

Standalone: run it inside a lab namespace, e.g.

    ip netns exec p2s123x0-c0 python browser_login.py URL --username alice --password alice-pass \
        --ca-file idp-ca.pem [--totp-secret BASE32 | --totp-code 123456] [--cancel login|otp] \
        [--ignore-https-errors] [--wait-text TEXT] [--screenshot out.png] [--timeout 60]

It opens URL (an authorization URL, or the gateway's WEB_AUTH URL that redirects to the IdP), fills the
login form (and the verification-code page, computing the TOTP code with pyotp from --totp-secret), or
presses Cancel, follows every redirect to the end and prints ONE JSON object on stdout:

    ok           true when the browser left the IdP's pages and the last page loaded without a network error
    outcome      "done" | "login_error" (wrong password: the login page came back with an error) |
                 "otp_error" | "idp_error" (the IdP's error page) | "navigation_error" | "timeout" | "error"
    steps        pages handled, in order: "login", "otp", "cancel"
    idp_error    the error text shown on an IdP page (login_error / otp_error / idp_error), else null
    final_url    page URL at the end;  title, text: its title and visible text;  status: its HTTP status
    navigations  every main-frame navigation request URL, redirects included (a redirect_uri?code=... is here
                 even when nothing listens there)
    error        network error text (e.g. net::ERR_CONNECTION_REFUSED) or exception, else null
    elapsed      seconds from start (browser launch included)

Trust: each --ca-file is added to a private NSS database ($HOME/.pki/nssdb of a throw-away HOME, made with
certutil) that Chromium reads, so the IdP's certificate is verified for real. --ignore-https-errors turns
certificate checking off for the whole browser context: use it only for the gateway's own test certificate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a namespace
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def make_nss_home(ca_files: list[str]) -> str:
    """A throw-away HOME whose ~/.pki/nssdb trusts `ca_files` as TLS server CAs (Chromium on Linux reads it)."""
    home = tempfile.mkdtemp(prefix="p2s-browser-")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    if ca_files:
        if shutil.which("certutil") is None:
            raise RuntimeError("certutil not found (Debian package libnss3-tools): cannot trust the lab CA")
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
        for index, path in enumerate(ca_files):
            subprocess.run(
                ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", f"p2s-lab-ca-{index}", "-t", "C,,", "-i", path],
                check=True,
                capture_output=True,
            )
    return home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--totp-secret")
    parser.add_argument("--totp-code", help="type this code instead of computing one (wrong-code tests)")
    parser.add_argument("--cancel", choices=["login", "otp"], help="press Cancel on this page")
    parser.add_argument("--ca-file", action="append", default=[])
    parser.add_argument("--ignore-https-errors", action="store_true")
    parser.add_argument("--wait-text", help="after leaving the IdP, wait until the page shows this text")
    parser.add_argument("--screenshot", help="save a PNG of the last page here")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()

    started = time.monotonic()
    result: dict = {
        "ok": False,
        "outcome": "error",
        "steps": [],
        "idp_error": None,
        "final_url": None,
        "title": None,
        "text": None,
        "status": None,
        "navigations": [],
        "error": None,
        "elapsed": None,
    }
    home = None
    try:
        home = make_nss_home(args.ca_file)
        run(args, result, home, started)
    except Exception as exc:  # noqa: BLE001 - report it: JSON out, never a bare traceback
        result["error"] = result["error"] or f"{type(exc).__name__}: {exc}"
    finally:
        if home:
            shutil.rmtree(home, ignore_errors=True)
    result["elapsed"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))
    return 0


def run(args, result: dict, home: str, started: float) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    def remaining_ms() -> float:
        return max(1000.0, (args.timeout - (time.monotonic() - started)) * 1000)

    env = dict(os.environ, HOME=home)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS, env=env, timeout=remaining_ms()
        )
        try:
            context = browser.new_context(ignore_https_errors=args.ignore_https_errors)
            page = context.new_page()
            last = {"response": None}

            def on_request(request) -> None:
                if request.is_navigation_request() and request.frame == page.main_frame:
                    result["navigations"].append(request.url)

            def on_failed(request) -> None:
                if request.is_navigation_request() and request.frame == page.main_frame:
                    result["error"] = f"{request.failure} ({request.url})"

            def on_response(response) -> None:
                if response.request.is_navigation_request() and response.frame == page.main_frame:
                    last["response"] = response

            page.on("request", on_request)
            page.on("requestfailed", on_failed)
            page.on("response", on_response)

            def step_name() -> str | None:
                form = page.query_selector("form[data-step]")
                return form.get_attribute("data-step") if form else None

            def idp_error_text() -> str | None:
                element = page.query_selector("#error")
                return element.inner_text().strip() if element else None

            def submit(selector: str) -> None:
                with page.expect_navigation(wait_until="load", timeout=remaining_ms()):
                    page.click(selector, timeout=remaining_ms())

            try:
                page.goto(args.url, wait_until="load", timeout=remaining_ms())
                previous = None
                for _ in range(8):
                    step = step_name()
                    if step is None:
                        break
                    if step == previous:  # the same page came back: the IdP refused what we typed
                        result["outcome"] = f"{step}_error"
                        result["idp_error"] = idp_error_text()
                        return
                    previous = step
                    if args.cancel == step:
                        result["steps"].append("cancel")
                        submit("#cancel")
                        previous = "cancel"
                        continue
                    result["steps"].append(step)
                    if step == "login":
                        page.fill("#username", args.username)
                        page.fill("#password", args.password)
                    else:
                        code = args.totp_code
                        if code is None:
                            if not args.totp_secret:
                                result["outcome"] = "otp_error"
                                result["idp_error"] = "the IdP asked for a code but no --totp-secret was given"
                                return
                            import pyotp

                            code = pyotp.TOTP(args.totp_secret).now()
                        page.fill("#otp", code)
                    submit("#submit")
                if page.title().startswith("Sign-in error") and page.query_selector("form[data-step]") is None:
                    result["outcome"] = "idp_error"
                    result["idp_error"] = page.inner_text("body").strip()
                    return
                if args.wait_text:
                    page.wait_for_function(
                        "text => document.body && document.body.innerText.includes(text)",
                        arg=args.wait_text,
                        timeout=remaining_ms(),
                    )
                result["outcome"] = "done"
                result["ok"] = result["error"] is None and not page.url.startswith("chrome-error:")
                if page.url.startswith("chrome-error:"):
                    result["outcome"] = "navigation_error"
            except PlaywrightTimeout as exc:
                result["outcome"] = "timeout"
                result["error"] = result["error"] or str(exc).splitlines()[0]
            except PlaywrightError as exc:
                result["outcome"] = "navigation_error"
                result["error"] = result["error"] or str(exc).splitlines()[0]
            finally:
                result["final_url"] = page.url
                try:
                    result["title"] = page.title()
                    result["text"] = page.inner_text("body", timeout=2000)
                except PlaywrightError:
                    pass
                if last["response"] is not None:
                    result["status"] = last["response"].status
                if args.screenshot:
                    try:
                        page.screenshot(path=args.screenshot, full_page=True)
                    except PlaywrightError:
                        pass
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
