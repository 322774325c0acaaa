"""Client address pools with sticky leases.

An identity keeps its address across reconnects and gateway restarts: the identity -> address mapping is
persistent (the `leases` table), while which addresses are live is known only to the running gateway.

Address choice for a new session of an identity:
1. its mapped address, if no live session holds it;
2. else the lowest address never mapped to anyone;
3. else the idle mapped address used least recently (its old owner loses stickiness, nobody loses service);
4. else None: every address is live.
Each step is O(1) or O(log n); addresses never handed out are walked lazily, so a /8 costs no memory up front.

Mapping changes are written behind: queued in memory and written by flush() (the gateway calls it
every second and when it stops) in one transaction, so a sign-in never waits for the database. A
crash loses at most the last second's stickiness, never an address in use (that is in memory only).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections import OrderedDict
from collections.abc import Iterable

from p2sgw.store import LeaseChange, Store
from p2sgw.store.models import utcnow

IPv4 = ipaddress.IPv4Address
# A pool needs its network, gateway and broadcast addresses plus at least one client address.
MAX_PREFIX_LEN = 30


def parse_pool_networks(networks: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """Validate pool CIDRs: IPv4, room for clients, no overlaps. Sorted by address."""
    parsed = []
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError(f"address pool {text}: only IPv4 pools are supported")
        if network.prefixlen > MAX_PREFIX_LEN:
            raise ValueError(f"address pool {text}: too small, use /{MAX_PREFIX_LEN} or larger")
        parsed.append(network)
    if not parsed:
        raise ValueError("at least one address pool is needed")
    parsed.sort()
    for lower, upper in itertools.pairwise(parsed):
        if lower.overlaps(upper):
            raise ValueError(f"address pools {lower} and {upper} overlap")
    return parsed


class AddressPool:
    """Not thread-safe: one instance per gateway, used from its event loop."""

    def __init__(self, networks: list[str], store: Store, pool_id: str = "default") -> None:
        self.networks = parse_pool_networks(networks)
        self._store = store
        self._pool_id = pool_id
        # Client addresses of each network as int ranges [first, last]: the first host is the gateway.
        self._ranges = [(int(n.network_address) + 2, int(n.broadcast_address) - 1) for n in self.networks]
        self._live: set[int] = set()
        self._owner: dict[int, str] = {}  # persistent mapping, mirrored from the store
        self._address_of: dict[str, int] = {}
        self._idle_mapped: OrderedDict[int, None] = OrderedDict()  # mapped, not live; oldest first
        self._returned: list[int] = []  # heap of unmapped addresses given back below the cursor
        self._cursor_range = 0
        self._cursor = self._ranges[0][0]
        self._pending: list[LeaseChange] = []  # written by flush()
        for record in store.load_leases(pool_id):
            address = int(IPv4(record.address))
            if self._is_client_address(address):
                self._owner[address] = record.identity
                self._address_of[record.identity] = address
                self._idle_mapped[address] = None

    def lease(self, identity: str) -> IPv4 | None:
        mapped = self._address_of.get(identity)
        if mapped is not None and mapped not in self._live:
            self._take_live(mapped)
            self._queue(str(IPv4(mapped)), identity)  # refreshes updated_at (least recently used goes first)
            return IPv4(mapped)
        # A second concurrent session of an identity gets an address of its own without moving the mapping.
        persist = mapped is None
        address = self._take_unmapped()
        if address is None:
            address = self._take_least_recently_used()
            if address is None:
                return None
            del self._address_of[self._owner.pop(address)]
            if not persist:
                self._queue(str(IPv4(address)), None)
        self._live.add(address)
        if persist:
            self._owner[address] = identity
            self._address_of[identity] = address
            self._queue(str(IPv4(address)), identity)
        return IPv4(address)

    def flush(self) -> int:
        """Write the queued mapping changes; returns how many. On a database error they stay queued."""
        if not self._pending:
            return 0
        self._store.apply_lease_changes(self._pending)
        count, self._pending = len(self._pending), []
        return count

    def _queue(self, address: str, identity: str | None) -> None:
        self._pending.append(LeaseChange(self._pool_id, address, identity, utcnow()))

    def claim(self, address: IPv4 | str) -> bool:
        """Take a specific address (a static one from RADIUS Framed-IP-Address) if it is ours and free."""
        value = int(IPv4(address))
        if not self._is_client_address(value) or value in self._live:
            return False
        self._take_live(value)
        return True

    def contains(self, address: IPv4 | str) -> bool:
        return self._is_client_address(int(IPv4(address)))

    def release(self, address: IPv4 | str) -> None:
        """The session holding address ended; its identity mapping stays for the next connect."""
        value = int(IPv4(address))
        if value not in self._live:
            return
        self._live.discard(value)
        if value in self._owner:
            self._idle_mapped[value] = None  # most recently used: stolen last
        else:
            heapq.heappush(self._returned, value)

    def gateway_address_for(self, ip: IPv4 | str) -> IPv4:
        return self._network_of(ip).network_address + 1

    def netmask_for(self, ip: IPv4 | str) -> IPv4:
        return self._network_of(ip).netmask

    def _network_of(self, ip: IPv4 | str) -> ipaddress.IPv4Network:
        address = IPv4(ip)
        for network in self.networks:
            if address in network:
                return network
        raise ValueError(f"{address} is not in any address pool")

    def _is_client_address(self, value: int) -> bool:
        return any(first <= value <= last for first, last in self._ranges)

    def _is_unmapped_free(self, value: int) -> bool:
        return value not in self._live and value not in self._owner

    def _take_live(self, value: int) -> None:
        self._idle_mapped.pop(value, None)
        self._live.add(value)

    def _take_unmapped(self) -> int | None:
        """Lowest address that is neither live nor mapped: the returned heap or the never-used cursor."""
        while self._returned and not self._is_unmapped_free(self._returned[0]):
            heapq.heappop(self._returned)
        fresh = self._peek_fresh()
        if self._returned and (fresh is None or self._returned[0] < fresh):
            return heapq.heappop(self._returned)
        if fresh is not None:
            self._cursor += 1
        return fresh

    def _peek_fresh(self) -> int | None:
        while self._cursor_range < len(self._ranges):
            last = self._ranges[self._cursor_range][1]
            while self._cursor <= last:
                if self._is_unmapped_free(self._cursor):
                    return self._cursor
                self._cursor += 1
            self._cursor_range += 1
            if self._cursor_range < len(self._ranges):
                self._cursor = self._ranges[self._cursor_range][0]
        return None

    def _take_least_recently_used(self) -> int | None:
        if not self._idle_mapped:
            return None
        address, _ = self._idle_mapped.popitem(last=False)
        return address
