"""Load generator: thousands of concurrent OpenVPN sessions against p2sgw or openvpn in the namespace lab (issue 6).

    sudo .venv/bin/python bench/loadgen.py --sessions 10000 --duration 300 [--target openvpn] [--json FILE]

Builds a lab (one client namespace) and starts the server under load: p2sgw through its CLI (pool
172.16.0.0/16), or with `--target openvpn` the reference openvpn 2.6 server (bench/reference_openvpn.py,
pool 172.17.0.0/16, duplicate-cn, max-clients above --sessions, verb 1). Both: UDP, AES-256-GCM, tls-crypt,
EC certificates, keepalive 10/60, ONE client certificate. Then it runs `--workers` load processes
inside the client namespace. Each opens its share of the sessions, one connected UDP
socket (one source port) per session, with the project's own sans-I/O client core
(p2sgw.openvpn.client): ramp-up at `--rate` sessions/s overall with at most `--max-pending`
handshakes in flight per worker, keepalive pings (the pushed `ping 10`), and every
`--echo-interval` seconds one hand-made ICMP echo from each session's tunnel address to the VNet
host 10.1.0.10, whose replies are counted. The hold phase of `--duration` seconds starts once
every session is up (or has failed for good); sessions are expected to stay up all through it.

Reports: sessions established, handshakes/s (overall and peak over 1 s and 5 s), handshake
latency, server RSS before / at the end of the hold / per session, sessions dropped (with
reasons), echo replies received / sent, gateway and load-generator CPU seconds, kernel UDP drop
counters, and warnings the server logged. "Gateway" figures (CPU, RSS) are summed over the server
process and all its descendants, sampled each time.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import queue
import random
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VNET_HOST = "10.1.0.10"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
RECV_BATCH = 32
ECHO_STOP_BEFORE_END = 5.0  # no new echoes in the last seconds: their replies can still arrive
EXIT_BATCH, EXIT_PAUSE = 100, 0.05  # leave at 2,000 sessions/s per worker: one burst overflows a server's UDP buffer


# =====================================================================================================
# process figures (/proc), always over a whole process tree: the gateway may run worker processes
def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants right now (/proc/<pid>/task/*/children, recursively)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += (int(child) for child in children.read_text().split())
            except OSError:  # the thread or the process went away meanwhile
                pass
    return pids


def rss_by_process(pid: int) -> dict[str, int]:
    """RSS (KiB) of each process in the tree, keyed "pid command" (control process vs data workers)."""
    out = {}
    for member in process_tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
            name = next((a.decode() for a in argv if a.startswith(b"p2sgw")), argv[0].decode().rsplit("/", 1)[-1])
            out[f"{member} {name}"] = _rss_pages(member) * PAGE_KIB
        except (OSError, ValueError, IndexError):
            pass
    return out


def _tree_sum(pid: int, one) -> int | float:
    total = 0
    for member in process_tree(pid):
        try:
            total += one(member)
        except (OSError, ValueError, IndexError):  # exited between the listing and the read
            pass
    return total


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime: reaped children count too


def _rss_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1])


def _switches(pid: int) -> int:
    return sum(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and all its descendants, living or reaped."""
    return _tree_sum(pid, _cpu_ticks) / CLK_TCK


def tree_rss_kib(pid: int) -> int:
    """RSS of `pid` plus all its descendants' (pages shared between them count once per process)."""
    return _tree_sum(pid, _rss_pages) * PAGE_KIB


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of the tree: unlike RSS, pages the processes share (libraries) count once overall."""
    return _tree_sum(pid, _pss_kib)


def tree_context_switches(pid: int) -> int:
    return _tree_sum(pid, _switches)


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat), to see what others used."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def raise_nofile(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new_hard = max(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# =====================================================================================================
# worker: runs inside the client namespace
def icmp_echo(src: bytes, dst: bytes, ident: int, seq: int, payload: bytes = b"p2sgw-loadgen-echo......") -> bytes:
    # imported here, where the worker runs with p2sgw on its path
    from p2sgw.io.gro import internet_checksum

    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0x4000, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + icmp


class Slot:
    """One session of a worker: its socket, its client core and the worker's bookkeeping."""

    __slots__ = ("attempts", "connected_at", "core", "deadline", "echo_ident", "echo_replies", "echo_sent",
                 "echo_seq", "idx", "next_echo", "sock", "src", "started_at", "state")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.sock: socket.socket | None = None
        self.core = None
        self.attempts = 0
        self.started_at = 0.0
        self.connected_at = 0.0
        self.state = "idle"  # idle -> handshake -> up -> dropped | failed | done
        self.deadline: float | None = None
        self.next_echo: float | None = None
        self.echo_seq = 0
        self.echo_sent = 0
        self.echo_replies = 0
        self.echo_ident = idx & 0xFFFF
        self.src = b""


class LoadWorker:
    def __init__(self, cfg: dict) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from p2sgw.openvpn.client import (
            Connected,
            OpenVPNClientSession,
            build_client_context,
        )
        from p2sgw.openvpn.events import SessionClosed
        from p2sgw.openvpn.static_key import parse_static_key
        from p2sgw.openvpn.tls_wrap import TlsCrypt

        self.cfg = cfg
        self.Session = OpenVPNClientSession
        self.Connected, self.SessionClosed = Connected, SessionClosed
        cert = x509.load_pem_x509_certificate(Path(cfg["cert"]).read_bytes())
        key = serialization.load_pem_private_key(Path(cfg["key"]).read_bytes(), None)
        ca = x509.load_pem_x509_certificate(Path(cfg["ca"]).read_bytes())
        self.ctx = build_client_context(cert, key, [ca], groups=cfg["tls_groups"] or None)
        self.wrap = TlsCrypt(parse_static_key(Path(cfg["tls_crypt"]).read_text()), server=False)
        self.server = (cfg["server"], cfg["port"])
        self.n = cfg["sessions"]
        self.rate = cfg["rate"]  # sessions/s for this worker, 0 = as fast as max_pending allows
        self.max_pending = cfg["max_pending"]
        self.retries = cfg["retries"]
        self.echo_interval = cfg["echo_interval"]
        self.vnet = socket.inet_aton(cfg["vnet_host"])
        self.slots = [Slot(cfg["first_index"] + i) for i in range(self.n)]
        self.tls_seen: collections.Counter[str] = collections.Counter()  # "TLS version, group, data cipher" per session
        self.by_fd: dict[int, Slot] = {}
        self.ep = select.epoll()
        self.heap: list[tuple[float, int, Slot]] = []
        self.seq = 0
        self.rng = random.Random(cfg["first_index"])
        self.to_start = collections.deque(self.slots)
        self.pending = 0
        self.next_start = cfg["start_at"]
        self.stop_at: float | None = None
        self.echo_stop: float | None = None
        self.exit_requested = False
        # figures
        self.connect_times: list[float] = []  # since the last report
        self.hs_ms: list[float] = []
        self.dropped: list[dict] = []
        self.failed: list[dict] = []
        self.failed_attempts = 0
        self.send_errors = collections.Counter()
        self.established_total = 0
        self.up = 0

    # ----------------------------------------------------------------- output to the parent
    def emit(self, kind: str, **fields) -> None:
        sys.stdout.write(json.dumps({"kind": kind, "worker": self.cfg["worker"], **fields}) + "\n")
        sys.stdout.flush()

    def report(self, now: float, final: bool = False) -> None:
        fields = {
            "t": now, "up": self.up, "established_total": self.established_total, "pending": self.pending,
            "not_started": len(self.to_start), "failed": len(self.failed), "failed_attempts": self.failed_attempts,
            "dropped": len(self.dropped), "connect_times": self.connect_times, "hs_ms": self.hs_ms,
            "echo_sent": sum(s.echo_sent for s in self.slots),
            "echo_replies": sum(s.echo_replies for s in self.slots),
            "cpu_s": time.process_time(), "send_errors": dict(self.send_errors),
        }
        self.connect_times, self.hs_ms = [], []
        if final:
            fields.update(dropped_sessions=self.dropped, failed_sessions=self.failed[:50],
                          pings_sent=sum(s.core.pings_sent for s in self.slots if s.core is not None),
                          pings_received=sum(s.core.pings_received for s in self.slots if s.core is not None),
                          client_drops=sum(s.core.drops for s in self.slots if s.core is not None),
                          tls_seen=dict(self.tls_seen))
        self.emit("final" if final else "stats", **fields)

    # ----------------------------------------------------------------- sessions
    def start_session(self, slot: Slot, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(self.server)
        slot.sock = sock
        slot.attempts += 1
        slot.started_at = now
        slot.state = "handshake"
        slot.core = self.Session(self.ctx, self.wrap, now, hand_window=self.cfg["hand_window"])
        self.by_fd[sock.fileno()] = slot
        self.ep.register(sock.fileno(), select.EPOLLIN)
        self.pending += 1
        self.service(slot, now)

    def end_socket(self, slot: Slot) -> None:
        if slot.sock is not None:
            fd = slot.sock.fileno()
            self.by_fd.pop(fd, None)
            try:
                self.ep.unregister(fd)
            except OSError:
                pass
            slot.sock.close()
            slot.sock = None
        slot.deadline = None

    def service(self, slot: Slot, now: float) -> None:
        """Handle the core's events, send what it produced, re-arm its timer."""
        core = slot.core
        closed_reason = None
        while (event := core.next_event()) is not None:
            if isinstance(event, self.Connected):
                slot.state = "up"
                slot.connected_at = now
                self.pending -= 1
                self.up += 1
                self.established_total += 1
                self.connect_times.append(now)
                self.hs_ms.append((now - slot.started_at) * 1000)
                slot.src = event.push.address.packed
                self.tls_seen[f"{event.tls_version} {event.tls_group}, data channel {event.cipher}"] += 1
                if self.echo_interval:
                    slot.next_echo = now + self.rng.uniform(1.0, self.echo_interval)
            elif isinstance(event, self.SessionClosed):
                closed_reason = event.reason
        sock = slot.sock
        for datagram in core.datagrams_to_send():
            try:
                sock.send(datagram)
            except OSError as exc:  # ENOBUFS, ECONNREFUSED (ICMP unreachable), EAGAIN
                self.send_errors[exc.__class__.__name__] += 1
        if closed_reason is not None:
            self.session_closed(slot, closed_reason, now)
            return
        self.arm(slot)

    def session_closed(self, slot: Slot, reason: str, now: float) -> None:
        self.end_socket(slot)
        if slot.state == "up":
            self.up -= 1
            slot.state = "dropped"
            self.dropped.append({"index": slot.idx, "reason": reason, "at": now, "up_s": round(now - slot.connected_at, 1),
                                 "address": socket.inet_ntoa(slot.src)})
            return
        if slot.state != "handshake":
            return
        self.pending -= 1
        self.failed_attempts += 1
        if slot.attempts <= self.retries and not self.exit_requested:
            slot.state = "idle"
            self.to_start.appendleft(slot)  # reconnect, like a real client
        else:
            slot.state = "failed"
            self.failed.append({"index": slot.idx, "reason": reason, "attempts": slot.attempts})

    def arm(self, slot: Slot) -> None:
        when = slot.core.timer()
        if slot.next_echo is not None and (when is None or slot.next_echo < when):
            when = slot.next_echo
        if when != slot.deadline:
            slot.deadline = when
            if when is not None:
                self.seq += 1
                heapq.heappush(self.heap, (when, self.seq, slot))

    def fire(self, slot: Slot, now: float) -> None:
        if slot.next_echo is not None and now >= slot.next_echo and slot.core.connected:
            if self.echo_stop is None or now < self.echo_stop:
                slot.echo_seq += 1
                packet = slot.core.encrypt(icmp_echo(slot.src, self.vnet, slot.echo_ident, slot.echo_seq))
                if packet is not None:
                    try:
                        slot.sock.send(packet)
                        slot.echo_sent += 1
                    except OSError as exc:
                        self.send_errors[exc.__class__.__name__] += 1
                slot.next_echo = now + self.echo_interval
            else:
                slot.next_echo = None
        t = slot.core.timer()
        if t is not None and now >= t:
            slot.core.handle_timer(now)
        self.service(slot, now)

    def readable(self, slot: Slot, now: float) -> None:
        sock, core = slot.sock, slot.core
        for _ in range(RECV_BATCH):
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ECONNREFUSED after an ICMP port unreachable
                self.send_errors["recv " + exc.__class__.__name__] += 1
                break
            plain = core.receive(data, now)
            if plain and len(plain) >= 28 and plain[9] == 1:
                ihl = (plain[0] & 0x0F) * 4
                if plain[ihl] == 0 and int.from_bytes(plain[ihl + 4 : ihl + 6], "big") == slot.echo_ident:
                    slot.echo_replies += 1
            if slot.sock is None:
                break
        self.service(slot, now)

    # ----------------------------------------------------------------- commands from the parent
    def command(self, line: str) -> None:
        cmd = json.loads(line)
        if cmd["cmd"] == "stop_at":
            self.stop_at = cmd["t"]
            self.echo_stop = cmd["t"] - ECHO_STOP_BEFORE_END
        elif cmd["cmd"] == "exit":
            self.exit_requested = True

    # ----------------------------------------------------------------- main loop
    def run(self) -> None:
        stdin_fd = sys.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        self.ep.register(stdin_fd, select.EPOLLIN)
        stdin_buf = b""
        next_report = time.time() + 1.0
        final_sent = False
        interval = 1.0 / self.rate if self.rate else 0.0
        while True:
            now = time.time()
            # ramp-up: start sessions at the target rate, never more than max_pending handshakes at once
            while self.to_start and self.pending < self.max_pending and now >= self.next_start \
                    and not self.exit_requested:
                self.start_session(self.to_start.popleft(), now)
                if interval:
                    self.next_start = max(self.next_start + interval, now - 1.0)  # catch up at most 1 s
            wake = next_report
            if self.heap:
                wake = min(wake, self.heap[0][0])
            if self.to_start and self.pending < self.max_pending:
                wake = min(wake, self.next_start)
            if self.stop_at is not None and not final_sent:
                wake = min(wake, self.stop_at)
            timeout = max(0.0, wake - time.time())
            events = self.ep.poll(timeout, 4096)
            now = time.time()
            for fd, _ in events:
                if fd == stdin_fd:
                    try:
                        chunk = os.read(stdin_fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:  # parent gone
                        self.exit_requested = True
                        self.ep.unregister(stdin_fd)
                        continue
                    stdin_buf += chunk
                    while b"\n" in stdin_buf:
                        line, stdin_buf = stdin_buf.split(b"\n", 1)
                        self.command(line.decode())
                    continue
                slot = self.by_fd.get(fd)
                if slot is not None:
                    self.readable(slot, now)
            due = []
            while self.heap and self.heap[0][0] <= now:
                when, _, slot = heapq.heappop(self.heap)
                if slot.deadline != when or slot.sock is None:
                    continue  # rescheduled or closed since
                slot.deadline = None
                due.append(slot)
            for slot in due:  # a slot that re-arms in the past runs again next round, not in a loop
                if slot.sock is not None:
                    self.fire(slot, now)
            if self.stop_at is not None and now >= self.stop_at and not final_sent:
                self.report(now, final=True)
                final_sent = True
            if now >= next_report:
                self.report(now)
                next_report = now + 1.0
            if self.exit_requested:
                break
        # leave politely: explicit-exit-notify from every session still up
        now = time.time()
        for slot in self.slots:
            if slot.sock is not None and slot.core is not None and slot.core.connected:
                slot.core.disconnect(now)
                for datagram in slot.core.datagrams_to_send():
                    try:
                        slot.sock.send(datagram)
                    except OSError:
                        pass
                if slot.idx % EXIT_BATCH == 0:
                    time.sleep(EXIT_PAUSE)
            self.end_socket(slot)
        if not final_sent:
            self.report(now, final=True)
        self.emit("bye")


def worker_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    raise_nofile(cfg["sessions"] + 1024)
    LoadWorker(cfg).run()
    return 0


# =====================================================================================================
# parent: lab, servers, workers, figures
def read_lines(proc: subprocess.Popen, out: queue.Queue, index: int) -> None:
    for line in proc.stdout:
        try:
            out.put((index, json.loads(line)))
        except ValueError:
            out.put((index, {"kind": "text", "text": line.rstrip()}))
    out.put((index, {"kind": "eof"}))


def snmp_udp(lab, ns: str) -> dict[str, int]:
    text = lab.run(ns, "cat", "/proc/net/snmp").stdout
    lines = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) >= 2 else {}


_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def gateway_log_summary(text: str) -> dict:
    """Warnings/errors by event and reason, session-close reasons, and a few sample lines."""
    warn_counts: collections.Counter[str] = collections.Counter()
    closed: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    drop_summary: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        level, event = parts[1], parts[2]
        fields = {k: v.strip('"') for k, v in _LOGFMT.findall(parts[3] if len(parts) > 3 else "")}
        if event == "openvpn.closed":
            closed[fields.get("reason", "?")] += 1
        if level in ("warning", "error"):
            key = f"{level} {event}" + (f" reason={fields['reason']}" if "reason" in fields else "")
            if event == "packet.dropped.summary":
                drop_summary[fields.get("reason", "?")] += int(fields.get("count", "0") or 0)
                key = f"{level} packet.dropped.summary reason={fields.get('reason', '?')}"
            warn_counts[key] += 1
            samples.setdefault(key, line[:400])
    return {"warnings": dict(warn_counts.most_common(30)), "closed_reasons": dict(closed.most_common(20)),
            "dropped_packets_in_summaries": dict(drop_summary.most_common(20)), "samples": samples}


def openvpn_log_summary(text: str) -> dict:
    """openvpn's log after start-up, by message with numbers masked (at verb 1 it logs little but problems)."""
    counts: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    started = False
    for line in text.splitlines():
        message = line[20:] if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) else line
        if not started:
            started = "Initialization Sequence Completed" in message
            continue
        key = re.sub(r"\d+", "N", message)[:160]
        counts[key] += 1
        samples.setdefault(key, line[:400])
    return {"messages": dict(counts.most_common(30)), "samples": samples}


# =====================================================================================================
# the server under load: p2sgw or the reference openvpn, behind one interface
P2SGW_POOL = "172.16.0.0/16"
OPENVPN_POOL = "172.17.0.0/16"  # its own /16, so both servers can share a lab
LOADGEN_CLIENT = "loadgen"  # the one certificate every p2sgw load session presents


@dataclass(frozen=True)
class LoadSettings:
    """One load run; the defaults are the command line's."""

    sessions: int = 1000
    duration: float = 60  # hold, after the ramp-up
    rate: float = 0
    workers: int = os.cpu_count() or 2
    max_pending: int = 16
    retries: int = 3
    echo_interval: float = 30
    hand_window: float = 60
    ramp_timeout: float = 0
    forget_timeout: float = 30  # how long to wait for the server to drop the sessions that left
    profile: bool = False
    # what the clients offer for the key exchange: OpenSSL 3.0's default list, i.e. openvpn 2.6 on
    # Debian 12. Our bundled OpenSSL would offer X25519MLKEM768 first, which the reference openvpn
    # server (Debian's OpenSSL 3.0) cannot take: the two servers would do different handshakes.
    tls_groups: str = "X25519:P-256:X448:P-521:P-384"


@dataclass
class Target:
    """What the load phase needs of a server: its address, credentials, process tree and session count."""

    name: str
    process: subprocess.Popen  # root of the server's process tree
    address: tuple[str, int]
    credentials: dict[str, str]  # PEM files: ca, cert, key, tls_crypt
    count_sessions: Callable[[], int]
    log_summary: Callable[[], dict]
    python: bool  # py-spy can profile it

    @property
    def pid(self) -> int:
        return self.process.pid

    def sessions(self) -> int | str:
        try:
            return self.count_sessions()
        except (OSError, ValueError, KeyError) as exc:
            return f"error: {exc}"


def prepare_p2sgw(gw, reset_rate: int = 100000) -> None:
    """Before `gw.start()`: keepalive 10/60, a handshake rate cap that does not cap the ramp, the load certificate."""
    gw.edit_config(openvpn__keepalive_interval=10, openvpn__keepalive_timeout=60,
                   openvpn__max_handshakes_per_second=reset_rate)
    gw.cli("client", "issue", LOADGEN_CLIENT)


def p2sgw_target(lab, gw) -> Target:
    pki = gw.state_dir / "pki"
    credentials = {"ca": pki / "ca.crt", "cert": pki / "clients" / f"{LOADGEN_CLIENT}.crt",
                   "key": pki / "clients" / f"{LOADGEN_CLIENT}.key", "tls_crypt": pki / "tls-crypt.key"}
    return Target(
        "p2sgw", gw.process, (lab.gw_client_ip, 1194), {k: str(v) for k, v in credentials.items()},
        lambda: len(lab.gateway_control(gw.state_dir, {"op": "sessions"}, timeout=60)["sessions"]),
        lambda: gateway_log_summary(gw.log_text()), python=True,
    )


def start_openvpn(lab, directory: Path, sessions: int):
    """The reference openvpn 2.6 for a load run: UDP, AES-256-GCM, tls-crypt, EC certificates, keepalive 10/60.

    max-clients has room above `sessions`: clients that left without explicit-exit-notify (bench/run.py's
    openvpn binary) hold their slot until ping-restart, and a full server refuses new clients."""
    from bench.reference_openvpn import many_clients_options, start_reference_server

    return start_reference_server(lab, directory, "udp", pool=OPENVPN_POOL, verb=1, management=True,
                                  extra_options=many_clients_options(sessions + 64))


def openvpn_target(lab, server) -> Target:
    pki = server.pki
    credentials = {"ca": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key, "tls_crypt": pki.tls_crypt_key}
    return Target(
        "openvpn", server.process, (lab.gw_client_ip, server.port), {k: str(v) for k, v in credentials.items()},
        server.client_count, lambda: openvpn_log_summary(server.log_path.read_text(errors="replace")), python=False,
    )


def use_source_tree(lab, src: Path | None) -> None:
    """Run p2sgw (CLI, serve) and the load workers from `src` instead of the checkout's src/."""
    if src is not None:
        default_env = lab.gateway_env
        lab.gateway_env = lambda env=None: default_env({"PYTHONPATH": str(src.resolve()), **(env or {})})


# =====================================================================================================
# one load run: workers in the client namespace against a running target
def run_load(lab, target: Target, settings: LoadSettings, workdir: Path) -> dict:
    """Connect `settings.sessions` sessions, hold them, let them leave; the figures as a dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    time.sleep(2.0)
    pid = target.pid
    rss_before, cpu_before, pss_before = tree_rss_kib(pid), tree_cpu_seconds(pid), tree_pss_kib(pid)
    print(f"{target.name} pid {pid} up ({len(process_tree(pid))} processes), RSS {rss_before} KiB; lab {lab.prefix}, "
          f"workdir {workdir}", flush=True)
    n_workers = max(1, min(settings.workers, settings.sessions))
    shares = [settings.sessions // n_workers + (1 if i < settings.sessions % n_workers else 0)
              for i in range(n_workers)]
    start_at = time.time() + 3.0
    first = 0
    lines: queue.Queue = queue.Queue()
    workers: list[subprocess.Popen] = []
    logs = []  # stderr files of our children, closed at the end
    report: dict = {"target": target.name}
    udp_before_exit: dict[str, int] = {}
    try:
        for i, share in enumerate(shares):
            cfg = {"worker": i, "sessions": share, "first_index": first, "server": target.address[0],
                   "port": target.address[1], "rate": settings.rate / n_workers, "max_pending": settings.max_pending,
                   "retries": settings.retries, "echo_interval": settings.echo_interval, "vnet_host": VNET_HOST,
                   "start_at": start_at, "hand_window": settings.hand_window, "tls_groups": settings.tls_groups,
                   **target.credentials}
            first += share
            path = workdir / f"worker-{i}.json"
            path.write_text(json.dumps(cfg))
            logs.append(open(workdir / f"worker-{i}.err", "wb"))  # noqa: SIM115 (closed at the end)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.netns("c0"), sys.executable, str(Path(__file__).resolve()),
                 "--worker", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1],
                text=True, bufsize=1, env=lab.gateway_env(),
            )
            workers.append(proc)
            threading.Thread(target=read_lines, args=(proc, lines, i), daemon=True).start()
        profilers: list[tuple[str, subprocess.Popen, Path]] = []
        if settings.profile:
            for name, profiled in (("gateway", pid if target.python else None), ("worker0", workers[0].pid)):
                if profiled is None:
                    continue
                out = workdir / f"py-spy-{name}-ramp.txt"
                logs.append(open(workdir / f"py-spy-{name}.err", "wb"))  # noqa: SIM115 (closed at the end)
                profilers.append((name, subprocess.Popen(
                    ["py-spy", "record", "--pid", str(profiled), "--rate", "200", "--format", "raw", "--nonblocking",
                     "-o", str(out)], stdout=subprocess.DEVNULL, stderr=logs[-1]),
                    out))
        report.update(_drive(settings, lab, target, workers, lines, start_at, (rss_before, pss_before, cpu_before),
                             profilers))
        udp_before_exit = snmp_udp(lab, "gw")
    finally:
        for proc in workers:
            if proc.poll() is None:
                try:
                    proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                    proc.stdin.flush()
                except OSError:
                    pass
        for proc in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its pid
                proc.wait()
        for handle in logs:
            handle.close()
    # after the clients left (explicit-exit-notify from each): how long until the server forgot them
    left_at = time.time()
    remaining: int | str = "?"
    while time.time() - left_at < settings.forget_timeout:
        remaining = target.sessions()
        if remaining == 0:
            break
        time.sleep(0.5)
    report["gateway_sessions_after_exit"] = remaining
    udp = snmp_udp(lab, "gw")
    report["gateway_udp_while_clients_left"] = {k: udp.get(k, 0) - udp_before_exit.get(k, 0)
                                                for k in ("InDatagrams", "RcvbufErrors")}
    report["gateway_seconds_to_forget_exited_clients"] = round(time.time() - left_at, 1)
    report["gateway_rss_after_exit_kib"] = tree_rss_kib(pid)
    report["gateway_log"] = target.log_summary()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("p2sgw", "openvpn"), default="p2sgw",
                        help="the server under load: p2sgw, or the reference openvpn 2.6 server (same clients)")
    parser.add_argument("--sessions", type=int, default=LoadSettings.sessions)
    parser.add_argument("--duration", type=float, default=LoadSettings.duration,
                        help="hold phase in seconds, after ramp-up")
    parser.add_argument("--rate", type=float, default=LoadSettings.rate, help="target new sessions/s overall "
                        "(0 = as fast as the server answers, bounded by --max-pending)")
    parser.add_argument("--workers", type=int, default=LoadSettings.workers)
    parser.add_argument("--max-pending", type=int, default=LoadSettings.max_pending,
                        help="handshakes in flight per worker")
    parser.add_argument("--retries", type=int, default=LoadSettings.retries,
                        help="reconnects of a session whose handshake failed")
    parser.add_argument("--echo-interval", type=float, default=LoadSettings.echo_interval)
    parser.add_argument("--hand-window", type=float, default=LoadSettings.hand_window,
                        help="client-side handshake timeout (s)")
    parser.add_argument("--gateway-reset-rate", type=int, default=100000,
                        help="p2sgw's max_handshakes_per_second (its default 200 would cap the ramp)")
    parser.add_argument("--ramp-timeout", type=float, default=LoadSettings.ramp_timeout, help="give up waiting "
                        "for the ramp after this many seconds (default: sessions / 20 + 120)")
    parser.add_argument("--forget-timeout", type=float, default=LoadSettings.forget_timeout,
                        help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway (p2sgw only) and worker 0 "
                        "during ramp-up (collapsed stacks in the workdir, top functions in the report)")
    parser.add_argument("--src", type=Path, default=None, help="run the gateway (CLI, serve) and the workers from "
                        "this source tree instead of the checkout's src/ (e.g. a `git archive` snapshot, so that "
                        "edits in the working tree cannot change a long run half-way)")
    parser.add_argument("--tls-groups", default=LoadSettings.tls_groups,
                        help="key-exchange groups the clients offer, OpenSSL syntax ('' = OpenSSL's default, "
                        "which puts the post-quantum X25519MLKEM768 first)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)

    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from e2e.gateway_fixture import init_gateway
    from e2e.lab import Lab

    nofile = raise_nofile(max(65536, args.sessions + 4096))  # inherited by the servers and the workers
    workdir = args.workdir or Path(f"/tmp/p2sgw-loadgen-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = LoadSettings(**{f.name: getattr(args, f.name) for f in fields(LoadSettings)})
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "machine": {"cpus": os.cpu_count(), "platform": os.uname().release,
                                "python": sys.version.split()[0]},
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
                    "nofile_limit": nofile, "src": str((args.src or REPO / "src").resolve())}
    pool = P2SGW_POOL if args.target == "p2sgw" else OPENVPN_POOL
    with Lab(1, workdir=workdir, pool=pool) as lab:
        use_source_tree(lab, args.src)
        if args.target == "p2sgw":
            gw = init_gateway(lab, pool=pool)
            prepare_p2sgw(gw, args.gateway_reset_rate)
            gw.start()
            target = p2sgw_target(lab, gw)
        else:
            target = openvpn_target(lab, start_openvpn(lab, workdir / "reference", args.sessions))
        report.update(run_load(lab, target, settings, workdir))
        lab.stop(target.process, timeout=10)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"JSON: {args.json}")
    return 0


def stop_profilers(profilers) -> dict:
    """SIGINT makes py-spy write its file; summarise the functions on top of the sampled stacks."""
    import signal

    tops = {}
    for name, proc, _ in profilers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for name, proc, out in profilers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        leaf: collections.Counter[str] = collections.Counter()
        total = 0
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not count.isdigit():
                    continue
                frame = stack.split(";")[-1]
                leaf[re.sub(r" \(/[^)]*/(site-packages|src)/", " (", frame)] += int(count)
                total += int(count)
        tops[name] = {"samples": total, "file": str(out),
                      "top_self": [(f, round(100 * n / total, 1)) for f, n in leaf.most_common(20)] if total else []}
    return tops


def _drive(settings: LoadSettings, lab, target: Target, workers, lines, start_at, before, profilers=()) -> dict:
    pid = target.pid
    rss_before, pss_before, cpu_before = before
    n_workers = len(workers)
    latest: dict[int, dict] = {}
    finals: dict[int, dict] = {}
    connect_times: list[float] = []
    hs_ms: list[float] = []
    timeline: list[dict] = []
    ramp_done_at = None
    stop_at = None
    rss_samples: list[tuple[float, int]] = []
    gw_sessions_at_end = None
    ramp_timeout = settings.ramp_timeout or settings.sessions / 20 + 120
    udp_before = {"gw": snmp_udp(lab, "gw"), "c0": snmp_udp(lab, "c0")}
    next_sample = time.time()
    worker_pids = [proc.pid for proc in workers]
    last = (time.time(), tree_cpu_seconds(pid), sum(tree_cpu_seconds(w) for w in worker_pids), system_cpu()[0])
    sys_at_start = system_cpu()[0]
    cpu_at_ramp = ctx_at_ramp = None
    profile = None
    rss_end = pss_end = cpu_end = ctx_end = t_end = None
    rss_by_process_start, rss_by_process_end = rss_by_process(pid), {}
    eof = set()
    while True:
        try:
            index, msg = lines.get(timeout=0.2)
        except queue.Empty:
            msg = None
        if msg is not None:
            kind = msg.get("kind")
            if kind == "stats" or kind == "final":
                latest[index] = msg
                connect_times += msg["connect_times"]
                hs_ms += msg["hs_ms"]
                if kind == "final":
                    finals[index] = msg
            elif kind == "eof":
                eof.add(index)
            elif kind == "text":
                print(f"worker {index}: {msg['text']}", flush=True)
        now = time.time()
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}")
        if len(eof) == n_workers and len(finals) < n_workers:
            raise RuntimeError("the load workers exited early; see worker-*.err in the workdir")
        if now >= next_sample:
            next_sample = now + 1.0
            rss = tree_rss_kib(pid)
            rss_samples.append((now, rss))
            try:
                sample = (now, tree_cpu_seconds(pid), sum(tree_cpu_seconds(w) for w in worker_pids), system_cpu()[0])
            except OSError:
                sample = last
            dt = (sample[0] - last[0]) or 1.0
            gw_cores, lg_cores, all_cores = ((sample[i] - last[i]) / dt for i in (1, 2, 3))
            last = sample
            up = sum(m["up"] for m in latest.values())
            row = {"t": round(now - start_at, 1), "up": up, "pending": sum(m["pending"] for m in latest.values()),
                   "failed_attempts": sum(m["failed_attempts"] for m in latest.values()),
                   "dropped": sum(m["dropped"] for m in latest.values()),
                   "gw_rss_kib": rss, "gw_cpu_s": round(tree_cpu_seconds(pid) - cpu_before, 2),
                   "echo_sent": sum(m["echo_sent"] for m in latest.values()),
                   "echo_replies": sum(m["echo_replies"] for m in latest.values()),
                   "cores_gateway": round(gw_cores, 2), "cores_loadgen": round(lg_cores, 2),
                   "cores_others": round(max(0.0, all_cores - gw_cores - lg_cores), 2)}
            timeline.append(row)
            if len(timeline) % 5 == 1 or (ramp_done_at and stop_at and now >= stop_at - 1):
                print(f"t={row['t']:7.1f}s up={up:6d} pending={row['pending']:4d} failed_attempts="
                      f"{row['failed_attempts']} dropped={row['dropped']} gw_rss={rss // 1024} MiB "
                      f"gw_cpu={row['gw_cpu_s']} s echo {row['echo_replies']}/{row['echo_sent']} cores gw/lg/other "
                      f"{row['cores_gateway']}/{row['cores_loadgen']}/{row['cores_others']}", flush=True)
            if ramp_done_at is None and len(latest) == n_workers:
                outstanding = sum(m["pending"] + m["not_started"] for m in latest.values())
                if outstanding == 0 or now - start_at > ramp_timeout:
                    ramp_done_at = now
                    stop_at = now + settings.duration
                    cpu_at_ramp, ctx_at_ramp = tree_cpu_seconds(pid), tree_context_switches(pid)
                    lg_at_ramp, sys_at_ramp = sum(tree_cpu_seconds(w) for w in worker_pids), system_cpu()[0]
                    profile = stop_profilers(profilers) if profilers else None
                    established = sum(m["up"] for m in latest.values())
                    print(f"ramp-up done after {now - start_at:.1f} s: {established} sessions up; holding "
                          f"{settings.duration:.0f} s", flush=True)
                    for proc in workers:
                        proc.stdin.write(json.dumps({"cmd": "stop_at", "t": stop_at}) + "\n")
                        proc.stdin.flush()
            if stop_at is not None and gw_sessions_at_end is None and now >= stop_at - 2.0:
                # while every session is still up: what the gateway says, and its memory
                rss_end, pss_end = tree_rss_kib(pid), tree_pss_kib(pid)
                rss_by_process_end = rss_by_process(pid)
                gw_sessions_at_end = target.sessions()
                cpu_end, ctx_end, t_end = tree_cpu_seconds(pid), tree_context_switches(pid), time.time()
        if len(finals) == n_workers:
            break
    if rss_end is None:
        rss_end, pss_end, cpu_end = tree_rss_kib(pid), tree_pss_kib(pid), tree_cpu_seconds(pid)
        rss_by_process_end = rss_by_process(pid)
        ctx_end, t_end = tree_context_switches(pid), time.time()
    udp_after = {"gw": snmp_udp(lab, "gw"), "c0": snmp_udp(lab, "c0")}
    established = sum(f["established_total"] for f in finals.values())
    up_at_end = sum(f["up"] for f in finals.values())
    dropped = [d for f in finals.values() for d in f["dropped_sessions"]]
    failed = [d for f in finals.values() for d in f["failed_sessions"]]
    echo_sent = sum(f["echo_sent"] for f in finals.values())
    echo_replies = sum(f["echo_replies"] for f in finals.values())
    connect_times.sort()
    buckets = collections.Counter(int(t) for t in connect_times)
    peak_1s = max(buckets.values(), default=0)
    peak_5s = 0.0
    if buckets:
        lo, hi = min(buckets), max(buckets)
        for s in range(lo, hi + 1):
            peak_5s = max(peak_5s, sum(buckets.get(s + k, 0) for k in range(5)) / 5)
    ramp_s = (connect_times[-1] - start_at) if connect_times else float("nan")
    hs_sorted = sorted(hs_ms)

    def pct(p: float) -> float:
        return round(hs_sorted[min(len(hs_sorted) - 1, int(p * len(hs_sorted)))], 1) if hs_sorted else float("nan")

    hold_s = t_end - ramp_done_at if ramp_done_at else float("nan")
    sessions_for_rss = up_at_end or established
    return {
        "sessions_requested": settings.sessions,
        "sessions_established": established,
        "sessions_up_at_end": up_at_end,
        "gateway_sessions_at_end": gw_sessions_at_end,
        "sessions_dropped": len(dropped),
        "dropped_reasons": dict(collections.Counter(d["reason"] for d in dropped).most_common(10)),
        "dropped_examples": dropped[:20],
        "sessions_failed": len(failed),
        "failed_examples": failed[:20],
        "handshake_failed_attempts": sum(f["failed_attempts"] for f in finals.values()),
        "ramp_seconds": round(ramp_s, 1),
        "handshakes_per_s_overall": round(established / ramp_s, 1) if connect_times else 0,
        "handshakes_per_s_peak_1s": peak_1s,
        "handshakes_per_s_peak_5s": round(peak_5s, 1),
        "handshake_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "hold_seconds": round(hold_s, 1),
        "gateway_rss_before_kib": rss_before,
        "gateway_rss_end_kib": rss_end,
        "gateway_rss_peak_kib": max(r for _, r in rss_samples),
        "gateway_rss_per_session_kib": round((rss_end - rss_before) / sessions_for_rss, 1) if sessions_for_rss else None,
        "gateway_rss_by_process_kib": {name: [rss_by_process_start.get(name), kib]
                                       for name, kib in rss_by_process_end.items()},
        "gateway_pss_before_kib": pss_before,
        "gateway_pss_end_kib": pss_end,
        "gateway_pss_per_session_kib": round((pss_end - pss_before) / sessions_for_rss, 1) if sessions_for_rss else None,
        "gateway_cpu_s_total": round(cpu_end - cpu_before, 2),
        "gateway_cpu_s_ramp": round(cpu_at_ramp - cpu_before, 2),
        "gateway_cpu_s_hold": round(cpu_end - cpu_at_ramp, 2),
        "gateway_cpu_pct_hold": round(100 * (cpu_end - cpu_at_ramp) / hold_s, 1) if hold_s else None,
        "ramp_cores": ({"gateway": round((cpu_at_ramp - cpu_before) / (ramp_done_at - start_at), 2),
                        "loadgen": round(lg_at_ramp / (ramp_done_at - start_at), 2),
                        "machine_busy": round((sys_at_ramp - sys_at_start) / (ramp_done_at - start_at), 2)}
                       if ramp_done_at and ramp_done_at > start_at else None),
        "gateway_cpu_ms_per_handshake": round(1000 * (cpu_at_ramp - cpu_before) / established, 2) if established else None,
        "gateway_wakeups_per_s_hold": round((ctx_end - ctx_at_ramp) / hold_s, 1) if hold_s else None,
        "echo_sent": echo_sent,
        "echo_replies": echo_replies,
        "echo_reply_ratio": round(echo_replies / echo_sent, 4) if echo_sent else None,
        "client_pings_sent": sum(f["pings_sent"] for f in finals.values()),
        "client_pings_received": sum(f["pings_received"] for f in finals.values()),
        "client_packet_drops": sum(f["client_drops"] for f in finals.values()),
        "client_tls": dict(sum((collections.Counter(f.get("tls_seen", {})) for f in finals.values()),
                               collections.Counter())),
        "client_send_errors": dict(sum((collections.Counter(f["send_errors"]) for f in finals.values()),
                                       collections.Counter())),
        "loadgen_cpu_s": [round(f["cpu_s"], 1) for f in finals.values()],
        "udp_counters_delta": {ns: {k: udp_after[ns].get(k, 0) - udp_before[ns].get(k, 0)
                                    for k in ("InDatagrams", "OutDatagrams", "InErrors", "RcvbufErrors",
                                              "SndbufErrors", "NoPorts")} for ns in udp_after},
        "profile_ramp": profile,
        "timeline": timeline,
    }


def print_report(r: dict) -> None:
    rows = [
        ("sessions established / requested", f"{r['sessions_established']} / {r['sessions_requested']}"),
        ("sessions up at end (client) / gateway's count", f"{r['sessions_up_at_end']} / {r['gateway_sessions_at_end']}"),
        ("sessions dropped during the run", f"{r['sessions_dropped']} {r['dropped_reasons'] or ''}"),
        ("sessions that never connected / failed attempts", f"{r['sessions_failed']} / {r['handshake_failed_attempts']}"),
        ("ramp-up (s)", r["ramp_seconds"]),
        ("handshakes/s overall / peak 1 s / peak 5 s",
         f"{r['handshakes_per_s_overall']} / {r['handshakes_per_s_peak_1s']} / {r['handshakes_per_s_peak_5s']}"),
        ("handshake latency ms p50 / p90 / p99 / max",
         " / ".join(str(r["handshake_ms"][k]) for k in ("p50", "p90", "p99", "max"))),
        ("hold (s)", r["hold_seconds"]),
        ("gateway RSS before / end / peak (KiB)",
         f"{r['gateway_rss_before_kib']} / {r['gateway_rss_end_kib']} / {r['gateway_rss_peak_kib']}"),
        ("gateway RSS per session (KiB); PSS per session",
         f"{r['gateway_rss_per_session_kib']}; {r['gateway_pss_per_session_kib']}"),
        ("gateway RSS after clients left (KiB); sessions left; seconds until then",
         (f"{r['gateway_rss_after_exit_kib']}; {r['gateway_sessions_after_exit']}; "
          f"{r['gateway_seconds_to_forget_exited_clients']}")),
        ("gateway UDP datagrams in / receive-buffer drops while clients left",
         " / ".join(str(r["gateway_udp_while_clients_left"].get(k)) for k in ("InDatagrams", "RcvbufErrors"))),
        ("gateway CPU s total / ramp / hold",
         f"{r['gateway_cpu_s_total']} / {r['gateway_cpu_s_ramp']} / {r['gateway_cpu_s_hold']}"),
        ("cores busy during ramp-up: gateway / load generator / whole machine", r["ramp_cores"]),
        ("gateway CPU ms per handshake; CPU % in hold", f"{r['gateway_cpu_ms_per_handshake']}; {r['gateway_cpu_pct_hold']}"),
        ("gateway wake-ups/s in hold (context switches)", r["gateway_wakeups_per_s_hold"]),
        ("echo replies / sent (ratio)", f"{r['echo_replies']} / {r['echo_sent']} ({r['echo_reply_ratio']})"),
        ("TLS the clients negotiated (sessions)", ", ".join(f"{k}: {v}" for k, v in r.get("client_tls", {}).items())),
        ("client keepalive pings sent / server pings received",
         f"{r['client_pings_sent']} / {r['client_pings_received']}"),
        ("load generator CPU s per worker", r["loadgen_cpu_s"]),
        ("UDP counters (delta) gw", r["udp_counters_delta"]["gw"]),
        ("UDP counters (delta) client ns", r["udp_counters_delta"]["c0"]),
    ]
    print("\n| metric | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    for name, prof in (r.get("profile_ramp") or {}).items():
        print(f"\npy-spy {name} during ramp-up ({prof['samples']} samples, {prof['file']}), top self time:")
        for frame, share in prof["top_self"][:15]:
            print(f"  {share:5.1f}%  {frame}")
    log = r.get("gateway_log", {})
    if log.get("warnings"):
        print(f"\n{r.get('target', 'gateway')} warnings:")
        for key, n in log["warnings"].items():
            print(f"  {n:6d}  {key}")
    if log.get("messages"):
        print(f"\n{r.get('target', 'server')} log after start-up, by message:")
        for key, n in log["messages"].items():
            print(f"  {n:6d}  {key}")
    if log.get("closed_reasons"):
        print("gateway session-close reasons:", log["closed_reasons"])


if __name__ == "__main__":
    raise SystemExit(main())
