"""TUN device: created and configured over netlink (pyroute2), queues attached with TUNSETIFF.

The device is multi-queue from the start so each worker process can own one queue fd
(IFF_MULTI_QUEUE); with one worker there is one queue. Reads and writes are IP packets behind a
10-byte virtio_net_hdr (IFF_VNET_HDR, no IFF_PI): reads come complete (no offloads are enabled
for them), writes may be GSO trains (io/gro.py).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000  # every read/write starts with a virtio_net_hdr: lets us write GSO trains (io/gro.py)

T = TypeVar("T")


def outside_event_loop(fn: Callable[[], T]) -> T:
    """Run a netlink call in a thread of its own: pyroute2's sync API drives an asyncio loop
    internally and cannot run inside ours (nor on uvloop, which lacks netlink sockets)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="netlink")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class TunDevice:
    def __init__(self, name: str, mtu: int, addresses: list[ipaddress.IPv4Interface], queues: int = 1) -> None:
        self.name = name
        self.mtu = mtu
        self.index = outside_event_loop(lambda: self._create(addresses))
        self.fds = [self._attach_queue() for _ in range(queues)]
        outside_event_loop(lambda: self._bring_up(addresses))

    def _create(self, addresses: list[ipaddress.IPv4Interface]) -> int:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=self.name):
                # left over from a crashed run: ours by name, so replace it
                ipr.link("del", index=ipr.link_lookup(ifname=self.name)[0])
            ipr.link("add", ifname=self.name, kind="tuntap", mode="tun", ifr={"no_pi": 1, "multi_queue": 1})
            return ipr.link_lookup(ifname=self.name)[0]

    def _bring_up(self, addresses: list[ipaddress.IPv4Interface]) -> None:
        with IPRoute() as ipr:
            for iface in addresses:
                ipr.addr("add", index=self.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=self.index, mtu=self.mtu, txqlen=1000, state="up")

    def _attach_queue(self) -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", self.name.encode(), flags))
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

        def delete() -> None:
            with IPRoute() as ipr:
                ipr.link("del", index=self.index)

        try:
            outside_event_loop(delete)
        except Exception:  # already gone (namespace torn down)
            pass


def ip_forwarding_enabled() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
