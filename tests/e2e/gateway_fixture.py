"""A p2sgw gateway running in a lab's gw namespace, initialised through its own CLI."""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .lab import Lab


@dataclass
class RunningGateway:
    lab: Lab
    state_dir: Path
    process: subprocess.Popen | None = None
    profiles: dict[str, Path] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.gateway_cli(self.state_dir, *args, check=check)

    def start(self) -> RunningGateway:
        self.process = self.lab.start_gateway(self.state_dir)
        self.lab.wait_gateway_ready(self.state_dir, self.process, timeout=30)
        return self

    def stop(self) -> int:
        assert self.process is not None
        code = self.lab.stop(self.process, timeout=10)
        self.process = None
        return code

    def edit_config(self, **changes) -> None:
        """Change p2sgw.toml before start (dotted keys: openvpn.reneg_sec=10)."""
        path = self.state_dir / "p2sgw.toml"
        data = tomllib.loads(path.read_text())
        for key, value in changes.items():
            section, _, name = key.rpartition("__")
            target = data[section] if section else data
            target[name] = value
        path.write_text(tomli_w.dumps(data))

    def issue(self, name: str, days: int | None = None) -> Path:
        """Issue a client certificate and write its .ovpn profile; returns the profile path."""
        args = ["client", "issue", name] + (["--days", str(days)] if days else [])
        self.cli(*args)
        profile = self.lab.workdir / f"{name}.ovpn"
        self.cli("profile", name, "--type", "openvpn", "-o", str(profile))
        self.profiles[name] = profile
        return profile

    def sessions(self) -> list[dict]:
        return json.loads(self.cli("sessions", "--json").stdout)

    def log_text(self) -> str:
        path = self.lab.workdir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""


def single_transport_profile(profile: Path, proto: str) -> Path:
    """Copy of a profile keeping only the <connection> block for `proto` (udp or tcp)."""
    text = profile.read_text()
    kept, block, inside = [], [], False
    for line in text.splitlines(keepends=True):
        if line.strip() == "<connection>":
            inside, block = True, [line]
            continue
        if inside:
            block.append(line)
            if line.strip() == "</connection>":
                inside = False
                if any(l.startswith("remote ") and l.split()[-1] == proto for l in block):
                    kept += block
            continue
        kept.append(line)
    out = profile.with_name(f"{profile.stem}-{proto}.ovpn")
    out.write_text("".join(kept))
    return out


def init_gateway(lab: Lab, *extra: str, pool: str | None = None) -> RunningGateway:
    state_dir = lab.workdir / "state"
    gw = RunningGateway(lab, state_dir)
    gw.cli(
        "init", "--public-address", lab.gw_client_ip, "--pool", pool or lab.pool,
        "--route", "10.1.0.0/24", *extra,
    )
    return gw


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the OpenVPN e2e tests (certificates made in the test, profiles, log and ping probes).

import datetime as _dt
import re as _re
import time as _time
from concurrent.futures import ThreadPoolExecutor as _ThreadPoolExecutor

from cryptography import x509 as _x509
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives import serialization as _serialization
from cryptography.hazmat.primitives.asymmetric import ec as _ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID as _NameOID

from .lab import tail as _tail
from .lab import wait_until as _wait_until


def _key_pem(key) -> str:
    return key.private_bytes(
        _serialization.Encoding.PEM, _serialization.PrivateFormat.PKCS8, _serialization.NoEncryption()
    ).decode()


def cert_pem(cert: _x509.Certificate) -> str:
    return cert.public_bytes(_serialization.Encoding.PEM).decode()


def make_ca(cn: str) -> tuple[_x509.Certificate, _ec.EllipticCurvePrivateKey]:
    """A self-signed root CA (EC P-256), independent of the gateway's PKI."""
    key = _ec.generate_private_key(_ec.SECP256R1())
    name = _x509.Name([_x509.NameAttribute(_NameOID.COMMON_NAME, cn)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        _x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=365))
        .add_extension(_x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hashes.SHA256())
    )
    return cert, key


_DEFAULT_EKU = (ExtendedKeyUsageOID.CLIENT_AUTH,)


def make_client_cert(
    ca_cert: _x509.Certificate,
    ca_key,
    cn: str,
    *,
    eku: tuple | None = _DEFAULT_EKU,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> tuple[str, str]:
    """(certificate PEM, key PEM) of a leaf signed by ca_key; eku=None leaves the EKU extension out."""
    key = _ec.generate_private_key(_ec.SECP256R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    builder = (
        _x509.CertificateBuilder()
        .subject_name(_x509.Name([_x509.NameAttribute(_NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_x509.random_serial_number())
        .not_valid_before(not_before or now - _dt.timedelta(hours=1))
        .not_valid_after(not_after or now + _dt.timedelta(days=30))
        .add_extension(_x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(_x509.ExtendedKeyUsage(list(eku)), critical=False)
    return cert_pem(builder.sign(ca_key, _hashes.SHA256())), _key_pem(key)


def gateway_ca(state_dir: Path) -> tuple[_x509.Certificate, object]:
    """The gateway's own CA certificate and private key (pki/ca.crt, pki/ca.key in the state directory)."""
    pki = Path(state_dir) / "pki"
    cert = _x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = _serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    return cert, key


def _replace_block(text: str, tag: str, body: str) -> str:
    pattern = _re.compile(rf"<{tag}>\n.*?\n</{tag}>", _re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"profile has no <{tag}> block")
    return pattern.sub(lambda _m: f"<{tag}>\n{body.strip()}\n</{tag}>", text, count=1)


def profile_with_credentials(template: Path, cert_pem_text: str, key_pem_text: str, out: Path) -> Path:
    """Copy of a gateway-issued profile whose <cert>/<key> are replaced (CA, tls-crypt, remotes kept)."""
    text = _replace_block(template.read_text(), "cert", cert_pem_text)
    text = _replace_block(text, "key", key_pem_text)
    out.write_text(text)
    out.chmod(0o600)
    return out


def issue_many(gw: RunningGateway, names: list[str], template: Path, workers: int = 4) -> dict[str, Path]:
    """Issue certificates through the CLI in parallel; profiles are `template` with each client's cert/key."""
    with _ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda n: gw.cli("client", "issue", n), names))
    clients = gw.state_dir / "pki" / "clients"
    profiles = {}
    for name in names:
        profiles[name] = profile_with_credentials(
            template, (clients / f"{name}.crt").read_text(), (clients / f"{name}.key").read_text(),
            gw.lab.workdir / f"{name}-{template.stem}.ovpn",
        )
    return profiles


def gateway_log_since(gw: RunningGateway, offset: int) -> str:
    return gw.log_text()[offset:]


def wait_gateway_log(gw: RunningGateway, pattern: str, since: int = 0, timeout: float = 20) -> str:
    """Wait for a gateway log line matching the regex `pattern` (only text after `since`); return the line."""
    regex = _re.compile(pattern)

    def find() -> str | None:
        for line in gw.log_text()[since:].splitlines():
            if regex.search(line):
                return line
        return None

    try:
        return _wait_until(find, timeout, interval=0.1, what=f"gateway log line matching {pattern!r}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{_tail(gw.lab.workdir / 'gateway.log')}") from None


def control_sessions(gw: RunningGateway) -> list[dict]:
    """Sessions straight from the control socket: much cheaper than a CLI call, for tight polling."""
    reply = gw.lab.gateway_control(gw.state_dir, {"op": "sessions"})
    assert reply.get("ok"), reply
    return reply["sessions"]


def wait_sessions(gw: RunningGateway, predicate, timeout: float = 15, what: str = "sessions") -> list[dict]:
    """Poll the control socket until predicate(sessions) holds; return those sessions."""
    seen: list[list[dict]] = []

    def check() -> bool:
        sessions = control_sessions(gw)
        seen[:] = [sessions]
        return bool(predicate(sessions))

    try:
        _wait_until(check, timeout, interval=0.1, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last sessions: {seen[0] if seen else None}") from None
    return seen[0]


class BackgroundPing:
    """`ping -c COUNT` running in a namespace while the test does something else; results parsed at the end."""

    def __init__(self, lab: Lab, ns: str, ip: str, count: int, interval: float = 0.2) -> None:
        self.log = lab.workdir / f"ping-{ns}-{_time.monotonic_ns()}.log"
        self.lab = lab
        self.count = count
        self.process = lab.popen(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip, log=self.log)

    def result(self, timeout: float = 60) -> tuple[int, int]:
        """(transmitted, received) once ping has finished."""
        self.process.wait(timeout)
        text = self.log.read_text()
        match = _re.search(r"(\d+) packets transmitted, (\d+) received", text)
        assert match, f"no ping summary in:\n{text[-2000:]}"
        return int(match.group(1)), int(match.group(2))
