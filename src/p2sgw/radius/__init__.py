"""RADIUS for p2sgw: packet coding on pyrad (packet), a sans-I/O client with failover (client),
MS-CHAPv2/MPPE (mschap) and the RFC 5176 server side (dynauth). The asyncio adapters are in
p2sgw.io.radius."""

from .client import (
    Dropped,
    Failed,
    RadiusClient,
    Response,
    Server,
    ServerDown,
    ServerUp,
)
from .packet import PacketError, RadiusError, RadiusPacket, RadiusReply

__all__ = [
    "Dropped",
    "Failed",
    "PacketError",
    "RadiusClient",
    "RadiusError",
    "RadiusPacket",
    "RadiusReply",
    "Response",
    "Server",
    "ServerDown",
    "ServerUp",
]
