"""PUSH_REPLY construction (ovpn26 push.c): options joined by commas, split into bundles.

Each message stays under the client's 1024-byte buffer; continuation parts end with
`push-continuation 2`, the last with `push-continuation 1`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

MAX_OPTION = 255
BUNDLE_LIMIT = 940


@dataclass(slots=True)
class ClientNetworkConfig:
    """What a client needs to configure its tunnel: its address, routes and DNS."""

    address: ipaddress.IPv4Address
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    routes: list[ipaddress.IPv4Network] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dns_domain: str | None = None

    def options(self) -> list[str]:
        opts = [
            "topology subnet",  # 2.6 clients default to net30: say it before ifconfig
            f"route-gateway {self.gateway}",
            f"ifconfig {self.address} {self.network.netmask}",
        ]
        opts += [f"route {r.network_address} {r.netmask}" for r in self.routes]
        opts += [f"dhcp-option DNS {d}" for d in self.dns_servers]
        if self.dns_domain:
            opts.append(f"dhcp-option DOMAIN {self.dns_domain}")
        return opts


def build_push_replies(options: list[str]) -> list[bytes]:
    """NUL-terminated PUSH_REPLY messages for the control channel."""
    for opt in options:
        if "," in opt or len(opt) > MAX_OPTION:
            raise ValueError(f"cannot push option {opt!r}")
    messages: list[list[str]] = [[]]
    size = 0
    for opt in options:
        if messages[-1] and size + len(opt) + 1 > BUNDLE_LIMIT:
            messages.append([])
            size = 0
        messages[-1].append(opt)
        size += len(opt) + 1
    if len(messages) == 1:
        return [("PUSH_REPLY," + ",".join(messages[0])).encode() + b"\0"]
    out = []
    for i, part in enumerate(messages):
        flag = 1 if i == len(messages) - 1 else 2
        out.append(("PUSH_REPLY," + ",".join(part) + f",push-continuation {flag}").encode() + b"\0")
    return out
