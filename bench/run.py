"""Benchmark: p2sgw next to a real openvpn 2.6 server, same lab, same client binary and cipher, one run.

    sudo .venv/bin/python bench/run.py [--seconds 10] [--sessions 1000] [--json bench/results/latest.json] [--smoke]

Measures per server: handshake time (client start → tunnel up), idle ping RTT, ping RTT under
load, iperf3 TCP throughput (upload, download), and gateway CPU seconds per GB moved; then, with
bench/loadgen.py's machinery (our own client core, one certificate, keepalive 10/60), connects
`--sessions` clients at once and reports handshakes/s and gateway RSS per connected session.
Gateway CPU and RSS are summed over the server process and its descendants. Prints a table with
both figures and the ratio p2sgw / openvpn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from bench.loadgen import (  # noqa: E402
    P2SGW_POOL,
    LoadSettings,
    openvpn_target,
    p2sgw_target,
    prepare_p2sgw,
    raise_nofile,
    run_load,
    start_openvpn,
    tree_cpu_seconds,
    use_source_tree,
)
from e2e.gateway_fixture import init_gateway, single_transport_profile  # noqa: E402
from e2e.lab import Lab  # noqa: E402


CLIENTS = 4  # client namespaces: the several-clients test runs one openvpn client in each
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) us=(\d+) (.*)$")


def handshake_seconds(log: str) -> float:
    """From the client's first packet ("link remote") to "Initialization Sequence Completed", by its own log clock."""
    start = end = None
    for line in log.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1e6
        if start is None and "link remote" in match.group(3):
            start = stamp
        elif "Initialization Sequence Completed" in match.group(3):
            end = stamp
    if start is None or end is None:
        return float("nan")
    return end - start


def ping_rtt(lab: Lab, ns: str, count: int = 20) -> float:
    out = lab.run(ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", lab.vnet_ip, check=False).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(match.group(1)) if match else float("nan")


def measure(lab: Lab, name: str, profile: Path, pid: int, seconds: int, handshakes: int) -> dict:
    ns = lab.clients[0]
    times = []
    for i in range(handshakes):
        client = lab.start_openvpn_client(ns, profile, name=f"{name}-hs{i}")
        client.wait_connected(timeout=30)
        times.append(handshake_seconds(client.log_text()))
        client.stop()
    client = lab.start_openvpn_client(ns, profile, name=name)
    client.wait_connected(timeout=30)
    idle = ping_rtt(lab, ns)
    result: dict = {"handshake_s": statistics.median(times), "ping_idle_ms": idle}
    for case, kwargs in IPERF_CASES:
        cpu0 = tree_cpu_seconds(pid)
        loaded: list[float] = []
        pinger = threading.Thread(target=lambda: loaded.append(ping_rtt(lab, ns, count=max(5, seconds * 3))))
        if case == "tcp_upload":
            pinger.start()  # RTT while the tunnel is full
        report = lab.iperf3(ns, lab.vnet_ip, seconds=seconds, **kwargs)
        if case == "tcp_upload":
            pinger.join()
            result["ping_loaded_ms"] = loaded[0] if loaded else float("nan")
        cpu = tree_cpu_seconds(pid) - cpu0
        end = report["end"]
        summary = end.get("sum_received") or end["sum"]  # UDP reports the receiver's view in "sum"
        moved = summary["bytes"]
        result[f"{case}_mbps"] = summary["bits_per_second"] / 1e6
        if "lost_percent" in summary:
            result[f"{case}_loss_pct"] = summary["lost_percent"]
        result[f"cpu_s_per_gb_{case}"] = cpu / (moved / 1e9) if moved else float("nan")
    result.update(several_clients(lab, name, profile, pid, seconds))
    client.stop()
    return result


def several_clients(lab: Lab, name: str, profile: Path, pid: int, seconds: int) -> dict:
    """TCP upload from every client namespace at once, one openvpn client and one stream each
    (the first client is already connected); the aggregate the gateway moves."""
    others = [lab.start_openvpn_client(ns, profile, name=f"{name}-{ns}") for ns in lab.clients[1:]]
    for other in others:
        other.wait_connected(timeout=30)
    reports: dict[str, dict] = {}
    errors: list[str] = []

    def upload(ns: str, port: int) -> None:
        try:
            reports[ns] = lab.iperf3(ns, lab.vnet_ip, seconds=seconds, port=port)
        except RuntimeError as exc:
            errors.append(f"{ns}: {exc}")

    cpu0 = tree_cpu_seconds(pid)
    threads = [threading.Thread(target=upload, args=(ns, 5201 + i)) for i, ns in enumerate(lab.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = tree_cpu_seconds(pid) - cpu0
    for other in others:
        other.stop()
    if errors:
        raise RuntimeError("; ".join(errors))
    received = [r["end"]["sum_received"] for r in reports.values()]
    moved = sum(r["bytes"] for r in received)
    return {"tcp_upload_clients_mbps": sum(r["bits_per_second"] for r in received) / 1e6,
            "tcp_upload_clients_min_mbps": min(r["bits_per_second"] for r in received) / 1e6,
            "cpu_s_per_gb_tcp_upload_clients": cpu / (moved / 1e9) if moved else float("nan")}


IPERF_CASES = [
    ("tcp_upload", {}),
    ("tcp_download", {"reverse": True}),
    ("tcp_upload_4", {"parallel": 4}),
    ("udp_upload", {"udp": True, "bitrate": "1G", "extra_args": ("-l", "1350")}),
]


def load_figures(load: dict) -> dict:
    """The many-clients rows of the table, from one loadgen run (the whole run goes to the JSON, minus its timeline)."""
    return {
        "load_sessions_established": load["sessions_established"],
        "load_handshakes_per_s": load["handshakes_per_s_overall"],
        "load_handshakes_per_s_peak_1s": load["handshakes_per_s_peak_1s"],
        "load_handshake_ms_p50": load["handshake_ms"]["p50"],
        "load_handshake_ms_p99": load["handshake_ms"]["p99"],
        "load_rss_kib_per_session": load["gateway_rss_per_session_kib"],
        "load_cpu_ms_per_handshake": load["gateway_cpu_ms_per_handshake"],
        "load": {k: v for k, v in load.items() if k != "timeline"},
    }


ROWS = [
    ("handshake_s", "handshake, client start to tunnel up (s)"),
    ("ping_idle_ms", "ping RTT idle (ms)"),
    ("ping_loaded_ms", "ping RTT under load (ms)"),
    ("tcp_upload_mbps", "TCP upload, 1 stream (Mbit/s)"),
    ("tcp_download_mbps", "TCP download, 1 stream (Mbit/s)"),
    ("tcp_upload_4_mbps", "TCP upload, 4 streams (Mbit/s)"),
    ("tcp_upload_clients_mbps", "TCP upload, {c} clients at once, aggregate (Mbit/s)"),
    ("tcp_upload_clients_min_mbps", "TCP upload, {c} clients at once, slowest client (Mbit/s)"),
    ("cpu_s_per_gb_tcp_upload_clients", "gateway CPU s per GB, {c} clients uploading"),
    ("udp_upload_mbps", "UDP upload at 1 Gbit/s offered, received (Mbit/s)"),
    ("udp_upload_loss_pct", "UDP upload loss (%)"),
    ("cpu_s_per_gb_tcp_upload", "gateway CPU s per GB, TCP upload"),
    ("cpu_s_per_gb_tcp_download", "gateway CPU s per GB, TCP download"),
    ("load_sessions_established", "sessions established, {m} clients connecting at once"),
    ("load_handshakes_per_s", "handshakes/s overall, {m} clients connecting"),
    ("load_handshakes_per_s_peak_1s", "handshakes/s, best second"),
    ("load_handshake_ms_p50", "handshake latency under that load, p50 (ms)"),
    ("load_handshake_ms_p99", "handshake latency under that load, p99 (ms)"),
    ("load_cpu_ms_per_handshake", "gateway CPU ms per handshake"),
    ("load_rss_kib_per_session", "gateway memory (RSS) per connected session (KiB)"),
]


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def table(ours: dict, ref: dict, sessions: int) -> str:
    lines = ["| metric | p2sgw | openvpn 2.6 | ratio p2sgw/openvpn |", "|---|---|---|---|"]
    for key, label in ROWS:
        label = label.format(m=sessions, c=CLIENTS)
        a, b = ours.get(key), ref.get(key)
        a, b = (float("nan") if v is None else v for v in (a, b))
        ratio = a / b if b else float("nan")
        lines.append(f"| {label} | {_number(a)} | {_number(b)} | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--handshakes", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=1000, help="clients connecting at once in the load phase")
    parser.add_argument("--hold", type=float, default=10, help="seconds the load phase holds its sessions idle")
    parser.add_argument("--src", type=Path, default=None, help="run p2sgw and the load clients from this source "
                        "tree instead of the checkout's src/ (e.g. a `git archive` snapshot)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    parser.add_argument("--smoke", action="store_true", help="short run to check the harness works")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.handshakes, args.sessions, args.hold = 2, 1, 50, 3
    # RSS is read with every session idle, after the echoes (they stop 5 s before the end of the hold)
    load = LoadSettings(sessions=args.sessions, duration=args.hold, echo_interval=args.hold, forget_timeout=15,
                        ramp_timeout=30 if args.smoke else 0)
    raise_nofile(max(65536, args.sessions + 4096))
    workdir = Path(f"/tmp/p2sgw-bench-{os.getpid()}")
    with Lab(CLIENTS, workdir=workdir, pool=P2SGW_POOL) as lab:
        use_source_tree(lab, args.src)
        gw = init_gateway(lab)
        profile = single_transport_profile(gw.issue("bench"), "udp")
        prepare_p2sgw(gw)
        gw.start()
        reference = start_openvpn(lab, workdir / "reference", args.sessions)
        ours = measure(lab, "p2sgw", profile, gw.process.pid, args.seconds, args.handshakes)
        ref = measure(lab, "openvpn", reference.client_profile, reference.process.pid, args.seconds,
                      args.handshakes)
        ours.update(load_figures(run_load(lab, p2sgw_target(lab, gw), load, workdir / "load-p2sgw")))
        ref.update(load_figures(run_load(lab, openvpn_target(lab, reference), load, workdir / "load-openvpn")))
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "seconds": args.seconds,
        "sessions": args.sessions,
        "hold_seconds": args.hold,
        "cipher": "AES-256-GCM",
        "transport": "udp",
        "p2sgw": ours,
        "openvpn": ref,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(table(ours, ref, args.sessions))
    print(f"\n{report['machine']}; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
