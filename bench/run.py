"""Benchmark: p2sgw next to a real openvpn 2.6 server, same lab, same client binary and cipher, one run.

    sudo .venv/bin/python bench/run.py [--seconds 10] [--json bench/results/latest.json] [--smoke]

Measures per server: handshake time (client start → tunnel up), idle ping RTT, ping RTT under
load, iperf3 TCP throughput (upload, download), and gateway CPU seconds per GB moved. Prints a
table with both figures and the ratio p2sgw / openvpn.
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

from bench.reference_openvpn import start_reference_server  # noqa: E402
from e2e.gateway_fixture import init_gateway, single_transport_profile  # noqa: E402
from e2e.lab import Lab  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
        cpu0 = cpu_seconds(pid)
        loaded: list[float] = []
        pinger = threading.Thread(target=lambda: loaded.append(ping_rtt(lab, ns, count=max(5, seconds * 3))))
        if case == "tcp_upload":
            pinger.start()  # RTT while the tunnel is full
        report = lab.iperf3(ns, lab.vnet_ip, seconds=seconds, **kwargs)
        if case == "tcp_upload":
            pinger.join()
            result["ping_loaded_ms"] = loaded[0] if loaded else float("nan")
        cpu = cpu_seconds(pid) - cpu0
        end = report["end"]
        summary = end.get("sum_received") or end["sum"]  # UDP reports the receiver's view in "sum"
        moved = summary["bytes"]
        result[f"{case}_mbps"] = summary["bits_per_second"] / 1e6
        if "lost_percent" in summary:
            result[f"{case}_loss_pct"] = summary["lost_percent"]
        result[f"cpu_s_per_gb_{case}"] = cpu / (moved / 1e9) if moved else float("nan")
    client.stop()
    return result


IPERF_CASES = [
    ("tcp_upload", {}),
    ("tcp_download", {"reverse": True}),
    ("tcp_upload_4", {"parallel": 4}),
    ("udp_upload", {"udp": True, "bitrate": "1G", "extra_args": ("-l", "1350")}),
]


ROWS = [
    ("handshake_s", "handshake, client start to tunnel up (s)"),
    ("ping_idle_ms", "ping RTT idle (ms)"),
    ("ping_loaded_ms", "ping RTT under load (ms)"),
    ("tcp_upload_mbps", "TCP upload, 1 stream (Mbit/s)"),
    ("tcp_download_mbps", "TCP download, 1 stream (Mbit/s)"),
    ("tcp_upload_4_mbps", "TCP upload, 4 streams (Mbit/s)"),
    ("udp_upload_mbps", "UDP upload at 1 Gbit/s offered, received (Mbit/s)"),
    ("udp_upload_loss_pct", "UDP upload loss (%)"),
    ("cpu_s_per_gb_tcp_upload", "gateway CPU s per GB, TCP upload"),
    ("cpu_s_per_gb_tcp_download", "gateway CPU s per GB, TCP download"),
]


def table(ours: dict, ref: dict) -> str:
    lines = ["| metric | p2sgw | openvpn 2.6 | ratio p2sgw/openvpn |", "|---|---|---|---|"]
    for key, label in ROWS:
        a, b = ours.get(key, float("nan")), ref.get(key, float("nan"))
        ratio = a / b if b else float("nan")
        lines.append(f"| {label} | {a:.3g} | {b:.3g} | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--handshakes", type=int, default=3)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    parser.add_argument("--smoke", action="store_true", help="short run to check the harness works")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.handshakes = 2, 1
    workdir = Path(f"/tmp/p2sgw-bench-{os.getpid()}")
    with Lab(1, workdir=workdir, extra_pools=("172.16.202.0/24",)) as lab:
        gw = init_gateway(lab)
        profile = single_transport_profile(gw.issue("bench"), "udp")
        gw.start()
        reference = start_reference_server(lab, workdir / "reference", proto="udp")
        ours = measure(lab, "p2sgw", profile, gw.process.pid, args.seconds, args.handshakes)
        ref = measure(lab, "openvpn", reference.client_profile, reference.process.pid, args.seconds,
                      args.handshakes)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "seconds": args.seconds,
        "cipher": "AES-256-GCM",
        "transport": "udp",
        "p2sgw": ours,
        "openvpn": ref,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(table(ours, ref))
    print(f"\n{report['machine']}; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
