"""A network-namespace lab for end-to-end tests against real third-party peers.

Topology (every namespace is private to one `Lab`, IPv6 off, nothing in the root namespace is touched):

    c0 192.0.2.10 ─┐
    c1 192.0.2.11 ─┤ br0 192.0.2.1 [gw, ip_forward=1] 10.1.0.1 ── 10.1.0.10 [vnet]
    ...           ─┘                                                 routes: pools via 10.1.0.1

Clients reach nothing but the gateway's segment, so anything they reach in 10.1.0.0/24 went through a tunnel.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[2]

CLIENT_SEGMENT = ipaddress.ip_network("192.0.2.0/24")
GW_CLIENT_IP = "192.0.2.1"
GW_VNET_IP = "10.1.0.1"
VNET_IP = "10.1.0.10"
VNET_NETWORK = "10.1.0.0/24"
DEFAULT_POOL = "172.16.201.0/24"
FIRST_CLIENT_HOST = 10

_lab_numbers = itertools.count()


class LabCommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's output, so a failing setup step explains itself."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return that value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def wait_for_text(path: Path, needle: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until a log file contains `needle`; fail fast, with the log, if the process writing it dies."""

    def found() -> bool:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process {process.args} exited with {process.returncode} before logging {needle!r}:\n{tail(path)}"
            )
        return False

    try:
        wait_until(found, timeout, what=f"{needle!r} in {path}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{tail(path)}") from None


def _ip(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise LabCommandError(result.returncode, result.args, result.stdout, result.stderr)
    return result


# Runs inside a namespace. Both ends hash the stream; the receiver sends "<count> <sha256>" back and the
# sender's exit status says whether every byte arrived intact.
_TRANSFER_SCRIPT = r"""
import hashlib, os, socket, sys, time
role, mode, host, port, nbytes, timeout = sys.argv[1:7]
port, nbytes, timeout = int(port), int(nbytes), float(timeout)
if role == "listen":
    server = socket.create_server((host, port))
    server.settimeout(timeout)
    conn, _ = server.accept()
else:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
conn.settimeout(timeout)
if mode == "send":
    data = os.urandom(nbytes)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
    expected = f"{nbytes} {hashlib.sha256(data).hexdigest()}".encode()
    print("intact" if reply == expected else f"corrupted: receiver reported {reply!r}, expected {expected!r}")
    sys.exit(0 if reply == expected else 1)
digest, count = hashlib.sha256(), 0
while chunk := conn.recv(65536):
    digest.update(chunk)
    count += len(chunk)
conn.sendall(f"{count} {digest.hexdigest()}".encode())
conn.close()
print(f"received {count} bytes")
"""


class Lab:
    """Namespaces gw, vnet and c0..cN-1 wired as in the module docstring; a context manager that always cleans up.

    `workdir` receives the log files (pass pytest's tmp_path); unix sockets go to a short private directory
    because socket paths are limited to 108 bytes.
    """

    def __init__(
        self,
        n_clients: int = 1,
        workdir: Path | None = None,
        pool: str = DEFAULT_POOL,
        extra_pools: Iterable[str] = (),
    ) -> None:
        if not 0 <= n_clients <= 200:
            raise ValueError("n_clients must be between 0 and 200")
        self.n_clients = n_clients
        self.pool = str(ipaddress.ip_network(pool))
        self.pools: list[str] = []
        self._initial_pools = [self.pool, *(str(ipaddress.ip_network(p)) for p in extra_pools)]
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="p2slab", dir="/tmp"))
        self.workdir = Path(workdir) if workdir is not None else self.runtime_dir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = self._unique_prefix()
        self.clients = [f"c{i}" for i in range(n_clients)]
        self.namespaces = {name: f"{self.prefix}-{name}" for name in ["gw", "vnet", *self.clients]}
        self.log_files: list[Path] = []
        self._processes: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._closed = False

    # ----------------------------------------------------------------- addressing
    gw_client_ip = GW_CLIENT_IP
    gw_vnet_ip = GW_VNET_IP
    vnet_ip = VNET_IP

    @staticmethod
    def client_ip(index: int) -> str:
        return str(CLIENT_SEGMENT.network_address + FIRST_CLIENT_HOST + index)

    def netns(self, name: str) -> str:
        """The real namespace name of a lab host ("gw", "vnet", "c0", ...)."""
        try:
            return self.namespaces[name]
        except KeyError:
            raise ValueError(f"no lab namespace {name!r}; have {sorted(self.namespaces)}") from None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _unique_prefix() -> str:
        existing = set(_ip("netns", "list").stdout.split())
        while True:
            prefix = f"p2s{os.getpid() % 10000}x{next(_lab_numbers)}"
            if not any(name.startswith(prefix + "-") for name in existing):
                return prefix

    def _build(self) -> None:
        for name, full in self.namespaces.items():
            _ip("netns", "add", full)
            self._created.append(full)
            self.run(
                name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                f"net.ipv4.ip_forward={1 if name == 'gw' else 0}",
            )
            self._link(name, "lo", "up")

        gw, vnet = self.netns("gw"), self.netns("vnet")
        _ip("-n", gw, "link", "add", "br0", "type", "bridge")
        _ip("-n", gw, "addr", "add", f"{GW_CLIENT_IP}/{CLIENT_SEGMENT.prefixlen}", "dev", "br0")
        self._link("gw", "br0", "up")
        for index, client in enumerate(self.clients):
            port = f"cport{index}"
            _ip("link", "add", "eth0", "netns", self.netns(client), "type", "veth", "peer", "name", port, "netns", gw)
            self._link("gw", port, "master", "br0", "up")
            address = f"{self.client_ip(index)}/{CLIENT_SEGMENT.prefixlen}"
            _ip("-n", self.netns(client), "addr", "add", address, "dev", "eth0")
            self._link(client, "eth0", "up")

        _ip("link", "add", "vnet0", "netns", gw, "type", "veth", "peer", "name", "eth0", "netns", vnet)
        _ip("-n", gw, "addr", "add", f"{GW_VNET_IP}/24", "dev", "vnet0")
        _ip("-n", vnet, "addr", "add", f"{VNET_IP}/24", "dev", "eth0")
        self._link("gw", "vnet0", "up")
        self._link("vnet", "eth0", "up")
        for pool in self._initial_pools:
            self.add_pool_route(pool)

    def _link(self, name: str, dev: str, *settings: str) -> None:
        _ip("-n", self.netns(name), "link", "set", dev, *settings)

    def add_pool_route(self, cidr: str) -> None:
        """Route a client address pool from the VNet host back through the gateway (idempotent)."""
        cidr = str(ipaddress.ip_network(cidr))
        if cidr not in self.pools:
            _ip("-n", self.netns("vnet"), "route", "add", cidr, "via", GW_VNET_IP)
            self.pools.append(cidr)

    def close(self) -> None:
        """Stop our processes, delete our namespaces and the runtime directory; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        self._stop_all(self._processes)
        for full in reversed(self._created):
            self._kill_leftovers(full)
            result = subprocess.run(["ip", "netns", "del", full], capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                problems.append(f"ip netns del {full}: {result.stderr.strip()}")
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if problems:
            raise RuntimeError("lab cleanup failed: " + "; ".join(problems))

    @staticmethod
    def _kill_leftovers(full: str) -> None:
        """Kill what still runs inside one of our namespaces (children our tracked processes left behind)."""
        result = subprocess.run(["ip", "netns", "pids", full], capture_output=True, text=True, timeout=30)
        for pid in result.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ----------------------------------------------------------------- processes
    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(ns), *map(str, argv)]

    def run(
        self,
        ns: str,
        *argv: str | os.PathLike,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command to completion inside a lab namespace, capturing text output."""
        result = subprocess.run(
            self._argv(ns, argv), capture_output=True, text=True, timeout=timeout, env=env, input=input
        )
        if check and result.returncode != 0:
            raise LabCommandError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def popen(
        self,
        ns: str,
        *argv: str | os.PathLike,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        """Start a background command in a namespace, output to `log`; it is stopped when the lab closes."""
        if log is None:
            log = self.workdir / f"{ns}-{Path(str(argv[0])).name}-{len(self._processes)}.log"
        log = Path(log)
        self.log_files.append(log)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self._argv(ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: we can signal it and its children together
            )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 5) -> int | None:
        """SIGTERM the process group we created for `process`, SIGKILL it if it lingers; return the exit code."""
        self._stop_all([process], timeout)
        return process.returncode

    @staticmethod
    def _stop_all(processes: Sequence[subprocess.Popen], timeout: float = 5) -> None:
        def signal_groups(sig: int) -> None:
            for process in processes:
                # An unreaped leader keeps its PID (and so its group ID) ours; never signal a reaped one.
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        pass

        signal_groups(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        signal_groups(signal.SIGKILL)
        for process in processes:
            process.wait()

    # ----------------------------------------------------------------- probes
    wait_for_log = staticmethod(wait_for_text)

    def ping(self, ns: str, ip: str, count: int = 3, deadline: float | None = None) -> bool:
        """True if at least one echo reply came back."""
        deadline = deadline if deadline is not None else count + 2
        result = self.run(
            ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline), ip,
            check=False, timeout=deadline + 10,
        )
        return result.returncode == 0

    def _wait_listening(self, ns: str, port: int, timeout: float = 10) -> None:
        wait_until(
            lambda: self.run(ns, "ss", "-Hltn", "sport", "=", f":{port}").stdout.strip(),
            timeout,
            what=f"a TCP listener on port {port} in {ns}",
        )

    def iperf3(
        self,
        client_ns: str,
        server_ip: str = VNET_IP,
        seconds: int = 3,
        *,
        reverse: bool = False,
        udp: bool = False,
        bitrate: str | None = None,
        parallel: int = 1,
        port: int = 5201,
        extra_args: Sequence[str] = (),
    ) -> dict:
        """Run one iperf3 test from `client_ns` against a one-shot server in vnet; return iperf3's JSON result."""
        server = self.popen("vnet", "iperf3", "-s", "-1", "-p", str(port))
        self._wait_listening("vnet", port)
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-P", str(parallel), "-J"]
        if reverse:
            argv.append("-R")
        if udp:
            argv.append("-u")
        if bitrate:
            argv += ["-b", bitrate]
        result = self.run(client_ns, *argv, *extra_args, check=False, timeout=seconds + 30)
        self.stop(server)
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 printed no JSON (rc {result.returncode}): {result.stderr}") from None
        if result.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 failed (rc {result.returncode}): {report.get('error', result.stderr)}")
        return report

    def tcp_transfer(
        self,
        client_ns: str,
        server_ip: str = VNET_IP,
        nbytes: int = 1 << 20,
        *,
        direction: Literal["upload", "download"] = "upload",
        port: int = 5301,
        timeout: float = 60,
    ) -> bool:
        """Move `nbytes` of random data over one TCP connection between `client_ns` and vnet; True if intact."""
        client_mode, server_mode = ("send", "receive") if direction == "upload" else ("receive", "send")
        common = [str(port), str(nbytes), str(timeout)]
        server = self.popen(
            "vnet", sys.executable, "-c", _TRANSFER_SCRIPT, "listen", server_mode, "0.0.0.0", *common,
            log=self.workdir / f"tcp-transfer-server-{len(self._processes)}.log",
        )
        client = self.run(
            client_ns, sys.executable, "-c", _TRANSFER_SCRIPT, "connect", client_mode, server_ip, *common,
            check=False, timeout=timeout + 10,
        )
        if client.returncode == 0:
            try:
                server.wait(5)  # it has sent or checked the digest already; only exit remains
            except subprocess.TimeoutExpired:
                pass
        self.stop(server)
        return client.returncode == 0 and server.returncode == 0

    # ----------------------------------------------------------------- real OpenVPN clients
    def start_openvpn_client(
        self, ns: str, config_path: Path, extra_args: Sequence[str] = (), name: str | None = None
    ) -> OpenVPNClient:
        """Start Debian's openvpn with `config_path` in `ns`, with a unix-socket management interface (no hold)."""
        name = name or f"openvpn-{ns}"
        socket_path = self.runtime_dir / f"{name}.sock"
        log = self.workdir / f"{name}.log"
        process = self.popen(
            ns, "openvpn", "--config", config_path, "--verb", "4", "--management", socket_path, "unix", *extra_args,
            log=log, cwd=Path(config_path).parent,
        )
        return OpenVPNClient(self, ns, name, process, socket_path, log)

    # ----------------------------------------------------------------- our gateway
    def gateway_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for p2sgw processes: importable from the source tree even when not pip-installed."""
        merged = dict(os.environ)
        merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), merged.get("PYTHONPATH")]))
        merged["PYTHONUNBUFFERED"] = "1"
        merged.update(env or {})
        return merged

    def start_gateway(self, state_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run `p2sgw serve` in the gw namespace (log: workdir/gateway.log)."""
        return self.popen(
            "gw", sys.executable, "-m", "p2sgw", "serve", "--state-dir", state_dir,
            log=self.workdir / "gateway.log", env=self.gateway_env(env),
        )

    def gateway_cli(
        self, state_dir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run one `p2sgw` command in the gw namespace; --state-dir goes last, every command accepts it."""
        return self.run(
            "gw", sys.executable, "-m", "p2sgw", *args, "--state-dir", state_dir,
            check=check, env=self.gateway_env(env), timeout=timeout,
        )

    @staticmethod
    def gateway_control(state_dir: Path, request: dict, timeout: float = 5) -> dict:
        """One request on the gateway's control socket (JSON line in, JSON line out)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(Path(state_dir) / "control.sock"))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n") and (chunk := sock.recv(65536)):
                reply += chunk
        return json.loads(reply)

    def wait_gateway_ready(self, state_dir: Path, process: subprocess.Popen, timeout: float = 20) -> None:
        """Wait until the gateway answers on its control socket; fail fast if it exits."""

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.returncode}:\n{tail(self.workdir / 'gateway.log')}")
            try:
                return bool(self.gateway_control(state_dir, {"op": "sessions"}).get("ok"))
            except (OSError, ValueError):
                return False

        try:
            wait_until(answers, timeout, interval=0.2, what="the gateway's control socket")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.workdir / 'gateway.log')}") from None


def drop_incoming(lab: "Lab", ns: str, table: str, match: str) -> None:
    """An nftables table in `ns` dropping incoming packets that match (`ip daddr X udp dport 1812`):
    the service looks dead (no answer, no ICMP, no RST) rather than refusing."""
    script = (
        f"table ip {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    {match} drop\n"
        "  }\n"
        "}\n"
    )
    lab.run(ns, "nft", "-f", "-", input=script)


def undrop_incoming(lab: "Lab", ns: str, table: str) -> None:
    lab.run(ns, "nft", "delete", "table", "ip", table, check=False)


class OpenVPNClient:
    """A running openvpn client process and its management interface."""

    def __init__(
        self, lab: Lab, ns: str, name: str, process: subprocess.Popen, socket_path: Path, log_path: Path
    ) -> None:
        self.lab = lab
        self.ns = ns
        self.name = name
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path
        self.virtual_ip: str | None = None
        self.notifications: list[str] = []  # ">..." real-time lines seen while talking to the interface

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 30) -> None:
        wait_for_text(self.log_path, needle, timeout, self.process)

    def mgmt(self, command: str, timeout: float = 5) -> str:
        """Send one management command and return its reply (up to END, or the SUCCESS:/ERROR: line)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            lines = self._lines(sock)
            greeting = next(lines)  # ">INFO:OpenVPN Management Interface Version ..."
            if not greeting.startswith(">INFO:"):
                raise RuntimeError(f"unexpected management greeting {greeting!r}")
            sock.sendall(command.encode() + b"\n")
            reply: list[str] = []
            for line in lines:
                if line.startswith(">"):
                    self.notifications.append(line)
                    continue
                if line == "END":
                    break
                reply.append(line)
                if line.startswith(("SUCCESS:", "ERROR:")):
                    break
            return "\n".join(reply)

    @staticmethod
    def _lines(sock: socket.socket):
        buffer = b""
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.rstrip(b"\r").decode(errors="replace")
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("management interface closed the connection")
            buffer += chunk

    def state(self) -> list[str]:
        """The current `state` line split into fields: time, name, detail, local IPv4, remote, ..."""
        return self.mgmt("state").splitlines()[-1].split(",")

    def wait_connected(self, timeout: float = 30) -> str:
        """Wait for CONNECTED,SUCCESS; return (and remember) the virtual IPv4 the server assigned."""

        def connected() -> str | None:
            if not self.running:
                raise RuntimeError(f"openvpn {self.name} exited with {self.process.returncode}:\n{tail(self.log_path)}")
            try:
                fields = self.state()
            except (OSError, ConnectionError, IndexError):
                return None  # not listening yet, or busy with another management client
            if len(fields) > 3 and fields[1] == "CONNECTED":
                if fields[2] != "SUCCESS":
                    raise RuntimeError(f"openvpn {self.name} connected with errors:\n{tail(self.log_path)}")
                return fields[3]
            return None

        try:
            self.virtual_ip = wait_until(connected, timeout, interval=0.2, what=f"openvpn {self.name} to connect")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.log_path)}") from None
        return self.virtual_ip

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (openvpn then tells the server it leaves), SIGKILL after `timeout`; return the exit code."""
        return self.lab.stop(self.process, timeout)
