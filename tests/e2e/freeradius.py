"""A real FreeRADIUS 3.2 (Debian `freeradius`) in a lab namespace, plus radclient helpers.

Every server gets a private configuration directory under `lab.workdir` (a copy of /etc/freeradius/3.0 with
our own radiusd.conf, clients.conf, site, users file, dictionary and module instances); the system's
configuration is never used in place. The server runs as root in the foreground (`freeradius -f -xx -l stdout`,
threads on, so a slow user does not hold up the others) through `lab.popen`, so the lab stops it.

    radius = FreeRadius(lab).start()                 # vnet, 10.1.0.10:1812/1813, secret "testing123"
    backup = FreeRadius(lab, name="radius2", address=SECONDARY_RADIUS_IP).start()   # adds 10.1.0.11/24 to vnet
    result = radius.radclient("auth", {"User-Name": "alice", "User-Password": "alice-pass"})
    assert result.code == "Access-Accept"
    radius.detail_records()                          # parsed accounting detail file
    radclient_disconnect(lab, "vnet", lab.gw_vnet_ip, "dynauth-secret", {"User-Name": "alice"})

API
- `FreeRadius(lab, ns="vnet", name="radius1", address=None, auth_port=1812, acct_port=1813, coa_port=None,
  secret="testing123", clients=("10.1.0.1",), users=None, slow_delay=40, otp_prompt=..., reject_delay=0,
  sign_replies=True, require_message_authenticator=True, max_request_time=120, extra_dictionary="")`
  `address` defaults to the namespace's lab address (vnet: 10.1.0.10, gw: 10.1.0.1); an address the vnet
  namespace lacks is added to its eth0 as /24 (`add_vnet_address`). Ports set to None are not opened.
  `coa_port` opens a Disconnect/CoA listener that ACKs every request (its `User-Name = "nak-user"` gets a NAK):
  a stand-in dynamic-authorization server to check the radclient helpers without the gateway.
  Methods: `.start()` (writes the config, runs `freeradius -C` then the server, waits for "Ready to process
  requests"), `.stop()`, context manager (start/stop), `.running`, `.log_text()` (the -xx debug output),
  `.log_path`, `.config_dir`, `.detail_path`, `.detail_records()`, `.address`, `.auth_port`, `.acct_port`,
  `.silence()` / `.unsilence()` (an nftables rule in the namespace drops packets to this server's ports: a
  dead server that does not even send ICMP), `.radclient(command, attrs, ...)` (from the gw namespace).
  `.log_mark()` + `.log_text(since=mark)` / `.wait_for_log(needle, since=mark)` look only at what was logged
  after the mark (the log is appended to across restarts of the same name).
- `default_users(slow_delay=40)` / `RadiusUser(name, password, reply=[(attr, value)], otp_code=, delay=)`: see
  the table below; pass `users=[...]` to replace them, `users=[*default_users(), RadiusUser(...)]` to extend.
- `radclient(lab, ns, server, command, secret, attrs, ...) -> RadclientResult` (code, attributes, sent,
  stdout, stderr, returncode, elapsed); `radclient_disconnect` / `radclient_coa(lab, ns, gateway_ip, secret,
  attrs, port=3799)` send RFC 5176 requests to the gateway (normally from "vnet", i.e. from 10.1.0.10).
  Message-Authenticator is added to every request unless `message_authenticator=False`.
- `parse_detail(text)` parses a detail file; `octets(value)` decodes a "0x..." value (Class is octets, so the
  detail file and radclient show it in hex).
- `mschapv2_request(user, password)` builds MS-CHAP-Challenge / MS-CHAP2-Response (RFC 2759) and returns the
  expected MS-CHAP2-Success and MS-MPPE keys (RFC 3079) for checking the server's answer.

Users (all defined in mods-config/files/authorize; every user has a Cleartext-Password, so PAP, CHAP, MS-CHAP
and MS-CHAPv2 all work for every one of them):
    alice       / alice-pass      Access-Accept, no reply attributes
    static      / static-pass     Framed-IP-Address = 172.16.201.77
    engineer    / engineer-pass   Class = "engineering"
    sales       / sales-pass      P2S-Lab-Group = "sales"  (VSA: vendor 32473 = the IANA example enterprise
                                  number of RFC 5612, attribute 1, string; gateway config "vendor:32473:1")
    timeout     / timeout-pass    Session-Timeout = 20
    otp         / otp-pass        1st request: Access-Challenge, Reply-Message "Enter your one-time code",
                                  State = "p2s-otp:otp"; 2nd request with that State and User-Password
                                  "123456" -> Access-Accept, any other code or State -> Access-Reject
    slow        / slow-pass       the answer comes after `slow_delay` seconds (default 40)
    mschap      / mschap-pass     a user meant for MS-CHAPv2 (nothing special in its entry)
Anyone else, or a wrong password -> Access-Reject.

EAP: the `eap` module is on with EAP-MD5 (default), EAP-GTC and EAP-MSCHAPv2, without TLS (Debian ships no
certificates in /etc/freeradius/3.0/certs, so PEAP/TTLS/TLS are not configured).

FreeRADIUS 3.2.1 specifics this module deals with:
- radiusd.conf sets `raddbdir`, so `-d DIR` alone would still read modules and certs from /etc: we write our
  own radiusd.conf with every directory pointing at the private copy, no `user`/`group` (no privilege drop).
- `-X` implies `-t` (no threads): one slow request would block every other user. We use `-f -xx -l stdout`.
- The Debian sites inner-tunnel (127.0.0.1:18120) and the default site's `ipaddr = *` listeners would collide
  between two servers in one namespace: only our own site is enabled, bound to `address`.
- 3.2.1 puts no Message-Authenticator in a non-EAP Access-Accept/Reject/Challenge or a Status-Server answer by
  itself: with `sign_replies` (default) the site adds `Message-Authenticator := 0x00` to every reply and the
  encoder signs it; `sign_replies=False` gives a genuine server whose replies are unsigned.
- `require_message_authenticator = yes` (clients.conf) makes it drop requests without one silently (log:
  "Packet does not contain required Message-Authenticator attribute"). radclient 3.2.1 adds one only when the
  input has `Message-Authenticator = 0x00`, which our helpers write first.
- Class is `octets`: radclient and the detail file print it in hex (`octets()` decodes). Debug output (-xx)
  shows User-Password in clear: it is a test server.
- Debian's `exec` instance has `timeout = 10`: it kills a longer sleep and the request goes on, answered early
  without any error. The slow user runs `%{p2s_sleep:/bin/sleep N}` through our own exec instance whose
  timeout is `max_request_time` (radiusd.conf calls 5-120 s the useful range; it must exceed the delay).
  Retransmissions of the same request while it sleeps are logged as "Ignoring duplicate packet" and get no
  answer (the sleep runs once); other threads keep answering other users meanwhile.
- `reject_delay` defaults to 0 here (Debian: 1 s) so refusals are immediate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .lab import GW_VNET_IP, VNET_IP, Lab, drop_incoming, tail, undrop_incoming, wait_until

SYSTEM_CONFIG = Path("/etc/freeradius/3.0")
SECONDARY_RADIUS_IP = "10.1.0.11"
DEFAULT_SECRET = "testing123"
OTP_PROMPT = "Enter your one-time code"
OTP_CODE = "123456"
LAB_VENDOR_ID = 32473  # RFC 5612: the enterprise number reserved for documentation and examples
LAB_GROUP_ATTRIBUTE = "P2S-Lab-Group"  # vendor 32473, type 1, string
NAK_USER = "nak-user"  # the CoA listener NAKs requests for this User-Name

_LAB_ADDRESSES = {"vnet": VNET_IP, "gw": GW_VNET_IP}

# Local attributes: 3000-3999 are free for site use and never leave the server.
_DICTIONARY = f"""\
# p2sgw lab: server-internal control attributes (set as check items in the users file)
ATTRIBUTE	P2S-OTP-Code		3000	string
ATTRIBUTE	P2S-Delay		3001	string

# p2sgw lab: a vendor-specific attribute selecting a policy group
VENDOR		P2S-Lab			{LAB_VENDOR_ID}
BEGIN-VENDOR	P2S-Lab
ATTRIBUTE	{LAB_GROUP_ATTRIBUTE}		1	string
END-VENDOR	P2S-Lab
"""

# Modules we keep from Debian's mods-available (everything else, e.g. unix/radutmp/eap with TLS, stays off).
_MODULES = ("always", "attr_filter", "chap", "expr", "files", "mschap", "pap", "preprocess")


@dataclass(frozen=True)
class RadiusUser:
    """One entry of the users file. `reply` values: str (quoted), int, bytes (0x...) or an IP address."""

    name: str
    password: str
    reply: Sequence[tuple[str, object]] = ()
    otp_code: str | None = None  # Access-Challenge first, then this code with the State
    delay: float | None = None  # seconds before the server answers

    def entry(self) -> str:
        check = [f"Cleartext-Password := {_quote(self.password)}"]
        if self.otp_code is not None:
            check.append(f"P2S-OTP-Code := {_quote(self.otp_code)}")
        if self.delay:
            check.append(f'P2S-Delay := "{self.delay:g}"')  # seconds, for /bin/sleep
        # First line: check items; then one reply item per line, each but the last ending in a comma.
        lines = [f"{_quote(self.name)}\t{', '.join(check)}"]
        if self.reply:
            lines.append(",\n".join(f"\t{name} = {_value(value)}" for name, value in self.reply))
        return "\n".join(lines) + "\n"


def default_users(slow_delay: float = 40) -> list[RadiusUser]:
    return [
        RadiusUser("alice", "alice-pass"),
        RadiusUser("static", "static-pass", reply=[("Framed-IP-Address", ipaddress.ip_address("172.16.201.77"))]),
        RadiusUser("engineer", "engineer-pass", reply=[("Class", "engineering")]),
        RadiusUser("sales", "sales-pass", reply=[(LAB_GROUP_ATTRIBUTE, "sales")]),
        RadiusUser("timeout", "timeout-pass", reply=[("Session-Timeout", 20)]),
        RadiusUser("otp", "otp-pass", otp_code=OTP_CODE),
        RadiusUser("slow", "slow-pass", delay=slow_delay),
        RadiusUser("mschap", "mschap-pass"),
    ]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: object) -> str:
    if isinstance(value, bool):
        raise TypeError("RADIUS values are str, int, bytes or IP addresses")
    if isinstance(value, int | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return _quote(str(value))


def octets(value: str) -> bytes:
    """Decode an octets value as FreeRADIUS prints it ("0x656e67..."), or a plain string's bytes."""
    if value.startswith("0x"):
        return bytes.fromhex(value[2:])
    return value.encode()


# ----------------------------------------------------------------- radclient


@dataclass
class RadclientResult:
    """What one radclient run sent and got back (parsed from its -x output)."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    code: str | None = None  # "Access-Accept", "Disconnect-ACK", ... or None when nothing came back
    attributes: dict[str, str | list[str]] = field(default_factory=dict)  # the reply's, values unquoted
    sent: dict[str, str | list[str]] = field(default_factory=dict)  # the request's, as radclient printed them

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return self.output


_PACKET_LINE = re.compile(r"^(Sent|Received) (\S+) Id \d+ from ")
_ATTR_LINE = re.compile(r"^\s+([A-Za-z0-9][\w.-]*) (?:=|:=|\+=) (.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _add(target: dict, name: str, value: str) -> None:
    if name not in target:
        target[name] = value
    elif isinstance(target[name], list):
        target[name].append(value)
    else:
        target[name] = [target[name], value]


def parse_radclient(stdout: str) -> tuple[str | None, dict, dict]:
    """(reply code, reply attributes, request attributes) of the last exchange in `radclient -x` output."""
    code, reply, sent, current = None, {}, {}, None
    for line in stdout.splitlines():
        match = _PACKET_LINE.match(line)
        if match:
            direction, name = match.groups()
            if direction == "Sent":
                sent, current = {}, "sent"
            else:
                code, reply, current = name, {}, "reply"
            continue
        attr = _ATTR_LINE.match(line)
        if attr and current:
            _add(sent if current == "sent" else reply, attr.group(1), _unquote(attr.group(2)))
        elif line and not line[0].isspace():
            current = None
    return code, reply, sent


AttrSpec = Mapping[str, object] | Iterable[tuple[str, object]]


def radclient(
    lab: Lab,
    ns: str,
    server: str,
    command: str,
    secret: str,
    attrs: AttrSpec,
    *,
    port: int | None = None,
    timeout: float = 3,
    retries: int = 1,
    message_authenticator: bool = True,
    dictionary_dir: Path | None = None,
) -> RadclientResult:
    """Send one packet with `radclient -x` from namespace `ns`; `command` is auth, acct, status, coa or disconnect.

    `timeout` is per try, `retries` is radclient's -r (1 = a single try). Values: str is quoted, int/bytes/IP as
    in the users file. `dictionary_dir` (a FreeRADIUS config dir, e.g.
    `FreeRadius.config_dir`) lets radclient name our lab attributes. Never raises for a reject or a timeout:
    look at `.code` (None = no answer).
    """
    pairs = list(attrs.items()) if isinstance(attrs, Mapping) else list(attrs)
    lines = []
    if message_authenticator and not any(name == "Message-Authenticator" for name, _ in pairs):
        lines.append("Message-Authenticator = 0x00")  # radclient computes it; first, as BlastRADIUS advice says
    lines += [f"{name} = {_value(value)}" for name, value in pairs]
    target = f"{server}:{port}" if port else server
    argv = ["radclient", "-x", "-t", str(timeout), "-r", str(retries)]
    if dictionary_dir is not None:
        argv += ["-d", str(dictionary_dir)]
    argv += [target, command, secret]
    started = time.monotonic()
    result = lab.run(ns, *argv, input="\n".join(lines) + "\n", check=False, timeout=timeout * (retries + 1) + 30)
    elapsed = time.monotonic() - started
    code, reply, sent = parse_radclient(result.stdout)
    return RadclientResult(result.returncode, result.stdout, result.stderr, elapsed, code, reply, sent)


def radclient_disconnect(
    lab: Lab, ns: str, gateway_ip: str, secret: str, attrs: AttrSpec, *, port: int = 3799, **kwargs
) -> RadclientResult:
    """RFC 5176 Disconnect-Request (attrs: User-Name and/or Acct-Session-Id ...) to the gateway's DAE port."""
    return radclient(lab, ns, gateway_ip, "disconnect", secret, attrs, port=port, **kwargs)


def radclient_coa(
    lab: Lab, ns: str, gateway_ip: str, secret: str, attrs: AttrSpec, *, port: int = 3799, **kwargs
) -> RadclientResult:
    """RFC 5176 CoA-Request (e.g. User-Name + Session-Timeout) to the gateway's DAE port."""
    return radclient(lab, ns, gateway_ip, "coa", secret, attrs, port=port, **kwargs)


# ----------------------------------------------------------------- detail file


def parse_detail(text: str) -> list[dict[str, str | list[str]]]:
    """Records of a FreeRADIUS detail file: attribute -> value (unquoted; a repeated attribute -> list).

    Each record also has "_header", the time line the detail module writes before it.
    """
    records: list[dict] = []
    current: dict | None = None
    for line in text.splitlines():
        if not line.strip():
            current = None
            continue
        if not line[0].isspace():
            current = {"_header": line.strip()}
            records.append(current)
            continue
        attr = _ATTR_LINE.match(line)
        if attr and current is not None:
            _add(current, attr.group(1), _unquote(attr.group(2)))
    return records


# ----------------------------------------------------------------- addresses


def add_vnet_address(lab: Lab, address: str, ns: str = "vnet", dev: str = "eth0", prefixlen: int = 24) -> None:
    """Give the VNet host one more address (idempotent), e.g. for a second RADIUS server."""
    if address not in _addresses(lab, ns):
        lab.run(ns, "ip", "addr", "add", f"{address}/{prefixlen}", "dev", dev)


def _addresses(lab: Lab, ns: str) -> set[str]:
    out = lab.run(ns, "ip", "-o", "-4", "addr", "show").stdout
    return {m.group(1) for m in re.finditer(r"\binet (\S+)/\d+", out)}


# ----------------------------------------------------------------- the server


class FreeRadius:
    """One FreeRADIUS server in a lab namespace (see the module docstring)."""

    def __init__(
        self,
        lab: Lab,
        ns: str = "vnet",
        name: str = "radius1",
        address: str | None = None,
        auth_port: int | None = 1812,
        acct_port: int | None = 1813,
        secret: str = DEFAULT_SECRET,
        clients: Iterable[str] = (GW_VNET_IP,),
        users: Iterable[RadiusUser] | None = None,
        *,
        coa_port: int | None = None,
        slow_delay: float = 40,
        otp_prompt: str = OTP_PROMPT,
        reject_delay: float = 0,  # Debian's default is 1 s; 0 keeps refusal tests fast
        sign_replies: bool = True,
        require_message_authenticator: bool = True,
        max_request_time: int = 120,
        extra_dictionary: str = "",
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"server name {name!r}: letters, digits, - and _ only")
        self.lab = lab
        self.ns = ns
        self.name = name
        address = address or _LAB_ADDRESSES.get(ns)
        if address is None:
            raise ValueError(f"give an address for namespace {ns!r}")
        self.address = address
        self.auth_port = auth_port
        self.acct_port = acct_port
        self.coa_port = coa_port
        self.secret = secret
        self.clients = list(clients)
        self.users = list(users) if users is not None else default_users(slow_delay)
        self.otp_prompt = otp_prompt
        self.reject_delay = reject_delay
        self.sign_replies = sign_replies
        self.require_message_authenticator = require_message_authenticator
        self.extra_dictionary = extra_dictionary
        longest = max((u.delay or 0 for u in self.users), default=0)
        if not 5 <= max_request_time <= 120:
            raise ValueError("max_request_time: FreeRADIUS 3.2's useful range is 5 to 120 s")
        if longest >= max_request_time:
            raise ValueError(f"a user's delay ({longest} s) must stay below max_request_time ({max_request_time})")
        self.max_request_time = max_request_time
        self.config_dir = lab.workdir / f"freeradius-{name}"
        self.log_path = lab.workdir / f"freeradius-{name}.log"
        self.detail_path = self.config_dir / "accounting.detail"
        self.process: subprocess.Popen | None = None
        self._nft_table = f"p2s_{name.replace('-', '_')}"
        self._silenced = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> FreeRadius:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20) -> FreeRadius:
        """Write the private config, check it with `freeradius -C`, run the server and wait until it is ready."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self.ns == "vnet":
            add_vnet_address(self.lab, self.address)
        elif self.address not in _addresses(self.lab, self.ns):
            raise ValueError(f"{self.address} is not an address of namespace {self.ns}")
        self.write_config()
        check = self.lab.run(self.ns, "freeradius", "-C", "-d", self.config_dir, "-xx", "-l", "stdout", check=False)
        if check.returncode != 0:
            output = "\n".join((check.stdout + check.stderr).splitlines()[-60:])
            raise RuntimeError(f"freeradius -C rejected the config of {self.name}:\n{output}")
        # The log is appended to across restarts: only this run's part counts.
        start_offset = self.log_mark()
        self.process = self.lab.popen(
            self.ns, "freeradius", "-f", "-xx", "-l", "stdout", "-d", self.config_dir, log=self.log_path
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"freeradius {self.name} exited with {code}:\n{tail(self.log_path)}")
            return "Ready to process requests" in self.log_text()[start_offset:]

        try:
            wait_until(ready, timeout, interval=0.05, what=f"freeradius {self.name} to be ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.log_path)}") from None
        return self

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL); the config and log stay for inspection."""
        self.unsilence()
        if self.process is None:
            return None
        code = self.lab.stop(self.process)
        self.process = None
        return code

    # ----------------------------------------------------------------- outcomes
    def log_text(self, since: int = 0) -> str:
        """The server's debug output (all runs of this name, appended), from offset `since` (see `log_mark`)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[since:]

    def log_mark(self) -> int:
        """An offset for `log_text(since=...)` / `wait_for_log(since=...)`: "what is logged from now on"."""
        return len(self.log_text())

    def wait_for_log(self, needle: str, timeout: float = 10, since: int = 0) -> None:
        def found() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"freeradius {self.name} exited before logging {needle!r}:\n{tail(self.log_path)}")
            return needle in self.log_text(since)

        try:
            wait_until(found, timeout, what=f"{needle!r} in {self.log_path}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.log_path)}") from None

    def detail_records(self) -> list[dict[str, str | list[str]]]:
        """Accounting requests the server logged, oldest first (see `parse_detail`)."""
        return parse_detail(self.detail_path.read_text(errors="replace")) if self.detail_path.exists() else []

    def radclient(self, command: str, attrs: AttrSpec, *, ns: str = "gw", **kwargs) -> RadclientResult:
        """radclient against this server (auth: auth_port, acct: acct_port), from the gw namespace by default."""
        port = {"auth": self.auth_port, "acct": self.acct_port, "status": self.auth_port}.get(command, self.coa_port)
        kwargs.setdefault("dictionary_dir", self.config_dir)
        return radclient(self.lab, ns, self.address, command, self.secret, attrs, port=port, **kwargs)

    # ----------------------------------------------------------------- failure injection
    def silence(self) -> None:
        """Drop every packet to this server's ports in its namespace: it looks dead, not refused."""
        ports = ", ".join(str(p) for p in (self.auth_port, self.acct_port, self.coa_port) if p)
        drop_incoming(self.lab, self.ns, self._nft_table, f"ip daddr {self.address} udp dport {{ {ports} }}")
        self._silenced = True

    def unsilence(self) -> None:
        if self._silenced:
            undrop_incoming(self.lab, self.ns, self._nft_table)
            self._silenced = False

    # ----------------------------------------------------------------- configuration
    def write_config(self) -> Path:
        """(Re)write the private configuration directory, keeping earlier accounting records; returns it."""
        d = self.config_dir
        detail = self.detail_path.read_bytes() if self.detail_path.exists() else None
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(SYSTEM_CONFIG, d, symlinks=True)
        if detail is not None:
            self.detail_path.write_bytes(detail)
        os.chmod(d, 0o750)
        for sub in ("mods-enabled", "sites-enabled"):
            shutil.rmtree(d / sub)
            (d / sub).mkdir()
        for module in _MODULES:
            (d / "mods-enabled" / module).symlink_to(f"../mods-available/{module}")
        (d / "radiusd.conf").write_text(self._radiusd_conf())
        (d / "clients.conf").write_text(self._clients_conf())
        (d / "dictionary").write_text(_DICTIONARY + self.extra_dictionary)
        (d / "mods-enabled" / "p2s_lab").write_text(self._modules_conf())
        (d / "sites-enabled" / "p2s_lab").write_text(self._site_conf())
        (d / "mods-config" / "files" / "authorize").write_text(
            "# p2sgw lab users (written by tests/e2e/freeradius.py)\n\n" + "\n".join(u.entry() for u in self.users)
        )
        return d

    def _radiusd_conf(self) -> str:
        d = self.config_dir
        return f"""\
# p2sgw lab FreeRADIUS {self.name} (written by tests/e2e/freeradius.py)
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
certdir = ${{confdir}}/certs
cadir = ${{confdir}}/certs
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/freeradius.pid
max_request_time = {self.max_request_time}
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no

log {{
	destination = files
	colourise = no
	file = {d}/radius.log
	stripped_names = no
	auth = yes
	auth_badpass = no
	auth_goodpass = no
}}

# No user/group: the server stays root and can read this directory.
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = {self.reject_delay}
	status_server = yes
}}

proxy_requests = no
$INCLUDE clients.conf

thread pool {{
	start_servers = 5
	max_servers = 32
	min_spare_servers = 3
	max_spare_servers = 10
	max_requests_per_server = 0
	auto_limit_acct = no
}}

modules {{
	$INCLUDE mods-enabled/
}}

instantiate {{
}}

policy {{
	$INCLUDE policy.d/
}}

$INCLUDE sites-enabled/
"""

    def _clients_conf(self) -> str:
        blocks = []
        for index, client in enumerate(self.clients):
            network = ipaddress.ip_network(client, strict=False)
            blocks.append(
                f"client lab{index} {{\n"
                f"\tipaddr = {network}\n"
                f"\tsecret = {_quote(self.secret)}\n"
                f"\trequire_message_authenticator = {'yes' if self.require_message_authenticator else 'no'}\n"
                f"\tnas_type = other\n"
                f"\tshortname = lab{index}\n"
                "}\n"
            )
        return "# p2sgw lab clients (written by tests/e2e/freeradius.py)\n" + "\n".join(blocks)

    def _modules_conf(self) -> str:
        detail = self.detail_path
        return f"""\
# p2sgw lab module instances (written by tests/e2e/freeradius.py)

# Accounting requests, one record each, in one known file.
detail p2s_detail {{
	filename = {detail}
	escape_filenames = no
	permissions = 0600
	header = "%t"
}}

# Blocking exec for the slow user. Debian's `exec` instance has timeout = 10 and would kill a longer sleep.
exec p2s_sleep {{
	wait = yes
	input_pairs = request
	shell_escape = yes
	timeout = {self.max_request_time}
}}

# EAP without TLS (EAP-MD5, EAP-MSCHAPv2, EAP-GTC), for relaying EAP-Message/State.
eap {{
	default_eap_type = md5
	timer_expire = 60
	ignore_unknown_eap_types = no
	cisco_accounting_username_bug = no
	max_sessions = ${{max_requests}}
	md5 {{
	}}
	gtc {{
		auth_type = PAP
	}}
	mschapv2 {{
		send_error = no
	}}
}}
"""

    def _site_conf(self) -> str:
        listens = []
        for kind, port in (("auth", self.auth_port), ("acct", self.acct_port), ("coa", self.coa_port)):
            if port:
                listens.append(
                    f"\tlisten {{\n\t\ttype = {kind}\n\t\tipaddr = {self.address}\n\t\tport = {port}\n\t}}\n"
                )

        def sign(depth: int, wrap: bool = True) -> str:
            """Unlang giving the reply a Message-Authenticator (the encoder computes it): 3.2.1 adds none."""
            if not self.sign_replies:
                return ""
            tabs = "\t" * depth
            line = f"{tabs}&Message-Authenticator := 0x00\n"
            return f"{tabs}update reply {{\n\t{line}{tabs}}}\n" if wrap else line

        return f"""\
# p2sgw lab site (written by tests/e2e/freeradius.py)
server p2s_lab {{
{"".join(listens)}
	authorize {{
		preprocess
		chap
		mschap
		eap {{
			ok = return
		}}
		files

		# Slow server: hold the answer for control:P2S-Delay seconds (users file check item).
		if (&control:P2S-Delay) {{
			update control {{
				&Tmp-String-9 := "%{{p2s_sleep:/bin/sleep %{{control:P2S-Delay}}}}"
			}}
		}}

		# OTP challenge: password first, then the code together with the State we sent.
		if (&control:P2S-OTP-Code) {{
			if (!&request:State) {{
				if (&request:User-Password && &request:User-Password == &control:Cleartext-Password) {{
					update reply {{
						&Reply-Message := {_quote(self.otp_prompt)}
						&State := "p2s-otp:%{{User-Name}}"
{sign(6, wrap=False)}					}}
					update control {{
						&Response-Packet-Type := Access-Challenge
					}}
					handled
				}}
				reject
			}}
			if (&request:State == "p2s-otp:%{{User-Name}}" && &request:User-Password == &control:P2S-OTP-Code) {{
				update control {{
					&Auth-Type := Accept
				}}
				ok
			}}
			else {{
				reject
			}}
		}}
		else {{
			pap
		}}

		Autz-Type Status-Server {{
{sign(3)}			ok
		}}
	}}

	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type CHAP {{
			chap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}

	preacct {{
		preprocess
		acct_unique
	}}

	accounting {{
		p2s_detail
		ok
	}}

	post-auth {{
{sign(2)}
		Post-Auth-Type REJECT {{
			attr_filter.access_reject
			eap
			remove_reply_message_if_eap
{sign(3)}		}}

		Post-Auth-Type Challenge {{
{sign(3)}		}}
	}}

	recv-coa {{
		if (&request:User-Name == "{NAK_USER}") {{
			reject
		}}
		ok
	}}

	send-coa {{
		ok
	}}
}}
"""


# ----------------------------------------------------------------- MS-CHAPv2 (RFC 2759 / RFC 3079)


def _md4(data: bytes) -> bytes:
    """MD4 (RFC 1320); OpenSSL 3 hides it in the legacy provider, so hashlib often lacks it."""

    def f(x, y, z):
        return (x & y) | (~x & z)

    def g(x, y, z):
        return (x & y) | (x & z) | (y & z)

    def h(x, y, z):
        return x ^ y ^ z

    def rotl(x, n):
        x &= 0xFFFFFFFF
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rotl(a + f(b, c, d) + x[k], s), b, c
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            a, b, c, d = d, rotl(a + g(b, c, d) + x[k] + 0x5A827999, s), b, c
        for i in range(16):
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            s = (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rotl(a + h(b, c, d) + x[k] + 0x6ED9EBA1, s), b, c
        a, b, c, d = (a + aa) & 0xFFFFFFFF, (b + bb) & 0xFFFFFFFF, (c + cc) & 0xFFFFFFFF, (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)


def _des_encrypt(key7: bytes, block: bytes) -> bytes:
    """DES-ECB with a 56-bit key expanded to 8 bytes (parity bits ignored), as MS-CHAP uses it."""
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    bits = int.from_bytes(key7, "big")
    key8 = bytes((((bits >> (49 - 7 * i)) & 0x7F) << 1) for i in range(8))
    encryptor = Cipher(TripleDES(key8 * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def nt_password_hash(password: str) -> bytes:
    return _md4(password.encode("utf-16-le"))


def _challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user: str) -> bytes:
    return hashlib.sha1(peer_challenge + authenticator_challenge + user.encode()).digest()[:8]


def _challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    key = password_hash + b"\x00" * 5
    return b"".join(_des_encrypt(key[i : i + 7], challenge) for i in (0, 7, 14))


_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = b"On the client side, this is the send key; on the server side, it is the receive key."
_KEY_MAGIC3 = b"On the client side, this is the receive key; on the server side, it is the send key."
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


@dataclass
class MSCHAPv2Exchange:
    """One MS-CHAPv2 Access-Request's attributes and what a correct server must answer."""

    attributes: list[tuple[str, object]]  # User-Name, MS-CHAP-Challenge, MS-CHAP2-Response
    ident: int
    expected_success: bytes  # MS-CHAP2-Success value: ident + b"S=<40 hex>"
    expected_send_key: bytes  # MS-MPPE-Send-Key (server -> client), 16 bytes
    expected_recv_key: bytes  # MS-MPPE-Recv-Key (client -> server), 16 bytes


def mschapv2_request(
    user: str,
    password: str,
    *,
    authenticator_challenge: bytes | None = None,
    peer_challenge: bytes | None = None,
    ident: int = 1,
) -> MSCHAPv2Exchange:
    """Build the request attributes of RFC 2548/2759 MS-CHAPv2 and the expected server answer (RFC 3079 keys)."""
    auth_challenge = authenticator_challenge or os.urandom(16)
    peer = peer_challenge or os.urandom(16)
    password_hash = nt_password_hash(password)
    nt_response = _challenge_response(_challenge_hash(peer, auth_challenge, user), password_hash)
    response = bytes([ident, 0]) + peer + b"\x00" * 8 + nt_response  # Ident, Flags, Peer-Challenge, Reserved, NT
    hash_hash = _md4(password_hash)
    digest = hashlib.sha1(hash_hash + nt_response + _MAGIC1).digest()
    authenticator = hashlib.sha1(digest + _challenge_hash(peer, auth_challenge, user) + _MAGIC2).digest()
    success = bytes([ident]) + b"S=" + authenticator.hex().upper().encode()
    master = hashlib.sha1(hash_hash + nt_response + _KEY_MAGIC1).digest()[:16]

    def asymmetric(magic: bytes) -> bytes:
        return hashlib.sha1(master + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:16]

    return MSCHAPv2Exchange(
        attributes=[("User-Name", user), ("MS-CHAP-Challenge", auth_challenge), ("MS-CHAP2-Response", response)],
        ident=ident,
        expected_success=success,
        expected_send_key=asymmetric(_KEY_MAGIC3),  # server side: send key uses magic 3
        expected_recv_key=asymmetric(_KEY_MAGIC2),
    )
