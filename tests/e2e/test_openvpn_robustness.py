"""Bad input is dropped with a log line, never crashes the gateway, never disturbs other sessions."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path


from .gateway_fixture import init_gateway, single_transport_profile
from .lab import wait_until

HOSTILE = str(Path(__file__).parent / "tools" / "hostile.py")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connected(lab, gw, name: str, index: int, proto: str = "udp"):
    profile = gw.profiles.get(name) or gw.issue(name)
    client = lab.start_openvpn_client(lab.clients[index], single_transport_profile(profile, proto))
    client.wait_connected(timeout=30)
    return client


def test_garbage_udp_and_tcp_is_dropped(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    gw.issue("alice")
    gw.start()
    _connected(lab, gw, "alice", 0)
    out = lab.run(lab.clients[1], sys.executable, HOSTILE, "garbage", lab.gw_client_ip, "1194", "3000").stdout
    assert "sent 3000" in out
    # TCP: random bytes, an absurd length prefix, and a valid-looking prefix cut short
    for blob in (os.urandom(300), b"\xff\xff" + os.urandom(50), b"\x00\x30\x38" + os.urandom(10)):
        lab.run(lab.clients[1], sys.executable, "-c",
                "import socket,sys; s=socket.create_connection((sys.argv[1],443),5); s.sendall(bytes.fromhex(sys.argv[2]));"
                "s.settimeout(5); print(s.recv(10))", lab.gw_client_ip, blob.hex(), check=False)
    assert gw.process.poll() is None, "gateway died"
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=3), "alice's session was disturbed"
    log = gw.log_text()
    assert "packet.dropped" in log
    assert "TCP connection with an unknown protocol" in log  # the shared-port classifier refused it
    assert "Traceback" not in log


def test_replayed_data_packets_are_dropped(make_lab):
    lab = make_lab(1)
    gw = init_gateway(lab)
    gw.issue("alice")
    gw.start()
    _connected(lab, gw, "alice", 0)
    ns = lab.clients[0]
    replayer = lab.popen(ns, sys.executable, HOSTILE, "replay", "eth0", "1194", "20", log=lab.workdir / "replay.log")
    assert lab.ping(ns, lab.vnet_ip, count=25, deadline=30)
    assert replayer.wait(timeout=30) == 0, (lab.workdir / "replay.log").read_text()
    wait_until(lambda: "replayed or too old data packet" in gw.log_text(), 10, what="replay drop logged")
    assert lab.ping(ns, lab.vnet_ip, count=3)
    assert "Traceback" not in gw.log_text()


def test_wrong_tls_crypt_key_is_refused(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    good = gw.issue("alice")
    gw.start()
    _connected(lab, gw, "alice", 0)
    text = good.read_text()
    other_key = lab.run(lab.clients[1], "openvpn", "--genkey", "secret", "/dev/stdout").stdout
    bad = re.sub(r"<tls-crypt>.*?</tls-crypt>", f"<tls-crypt>\n{other_key}</tls-crypt>", text, flags=re.S)
    bad_path = lab.workdir / "wrong-key.ovpn"
    bad_path.write_text(bad)
    intruder = lab.start_openvpn_client(lab.clients[1], single_transport_profile(bad_path, "udp"))
    wait_until(lambda: "tls-crypt authentication failed" in gw.log_text(), 15, what="wrong key logged")
    assert "Initialization Sequence Completed" not in intruder.log_text()
    assert len(gw.sessions()) == 1
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    intruder.stop()


def test_spoofed_reset_flood_keeps_memory_flat(make_lab):
    lab = make_lab(2)
    gw = init_gateway(lab)
    gw.issue("alice")
    gw.start()
    _connected(lab, gw, "alice", 0)
    pid = gw.process.pid
    # warm up: the first handful of resets allocate the code paths' caches
    lab.run(lab.clients[1], sys.executable, HOSTILE, "reset-flood", lab.gw_client_ip, "1194", "500",
            str(gw.state_dir / "pki" / "tls-crypt.key"))
    time.sleep(1)
    before = _rss_kib(pid)
    out = lab.run(lab.clients[1], sys.executable, HOSTILE, "reset-flood", lab.gw_client_ip, "1194", "20000",
                  str(gw.state_dir / "pki" / "tls-crypt.key"), timeout=120).stdout
    assert "sent 20000" in out
    time.sleep(1)
    after = _rss_kib(pid)
    assert after - before < 4096, f"gateway RSS grew from {before} KiB to {after} KiB during a reset flood"
    assert "reset rate limit exceeded" in gw.log_text()
    assert gw.sessions() and len(gw.sessions()) == 1  # no state for spoofed peers
    assert lab.ping(lab.clients[0], lab.vnet_ip, count=2)
    # a legitimate client still gets in after the flood
    bob = gw.issue("bob")
    client = lab.start_openvpn_client(lab.clients[1], single_transport_profile(bob, "udp"))
    client.wait_connected(timeout=30)
    assert len(gw.sessions()) == 2


