"""Policy groups: which address pool, routes and DNS a user gets.

A group is matched by what the authentication backend reported (a RADIUS Class or vendor
attribute value, OIDC groups) or by the certificate CN's domain. The lowest priority number wins;
users matching no group get the default group (the one marked `default`, else the gateway-wide
pool, routes and DNS).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .addressing import AddressPool
from .auth.base import AuthResult
from .config import GatewayConfig
from .store import Store

DEFAULT_GROUP = "default"


@dataclass(slots=True)
class GroupPolicy:
    name: str
    pool: AddressPool
    routes: list[ipaddress.IPv4Network]
    dns_servers: list[str]
    priority: int = 1 << 30
    radius_values: frozenset[str] = frozenset()
    certificate_domains: tuple[str, ...] = ()
    oidc_groups: frozenset[str] = frozenset()

    def matches(self, result: AuthResult) -> bool:
        hints = set(result.group_hints)
        if hints & self.radius_values or hints & self.oidc_groups:
            return True
        identity = result.identity.lower()
        return any(identity.endswith(domain.lower()) for domain in self.certificate_domains)


class PolicyGroups:
    def __init__(self, config: GatewayConfig, store: Store) -> None:
        routes = [ipaddress.ip_network(r) for r in config.routes]
        self.groups: list[GroupPolicy] = []
        default: GroupPolicy | None = None
        for g in sorted(config.policy_groups, key=lambda g: g.priority):
            policy = GroupPolicy(
                name=g.name,
                pool=AddressPool(g.address_pools, store, pool_id=g.name),
                routes=[ipaddress.ip_network(r) for r in g.routes] if g.routes is not None else routes,
                dns_servers=list(g.dns_servers) if g.dns_servers is not None else list(config.dns_servers),
                priority=g.priority,
                radius_values=frozenset(g.radius_values),
                certificate_domains=tuple(g.certificate_domains),
                oidc_groups=frozenset(g.oidc_groups),
            )
            self.groups.append(policy)
            if g.default:
                default = policy
        if default is None:
            default = GroupPolicy(
                DEFAULT_GROUP, AddressPool(config.vpn_client_address_pool, store), routes, list(config.dns_servers)
            )
        self.default = default
        self._check_disjoint()

    def _check_disjoint(self) -> None:
        seen: list[tuple[ipaddress.IPv4Network, str]] = []
        for group in self.all():
            for net in group.pool.networks:
                for other, name in seen:
                    if net.overlaps(other):
                        raise ValueError(f"address pools of groups {name} and {group.name} overlap ({other}, {net})")
                seen.append((net, group.name))

    def flush_leases(self) -> int:
        """Write every pool's queued lease changes (see addressing.py); returns how many."""
        return sum(group.pool.flush() for group in self.all())

    def all(self) -> list[GroupPolicy]:
        return self.groups + ([self.default] if self.default not in self.groups else [])

    def select(self, result: AuthResult) -> GroupPolicy:
        for group in self.groups:
            if group.matches(result):
                return group
        return self.default

    def pool_networks(self) -> list[ipaddress.IPv4Network]:
        return [net for group in self.all() for net in group.pool.networks]

    def group_of_address(self, address: ipaddress.IPv4Address) -> GroupPolicy | None:
        for group in self.all():
            if group.pool.contains(address):
                return group
        return None
