"""Data-plane worker processes: the packet path on every core, the control plane in one place.

The control process (gateway.py) runs TLS, authentication, management and every timer. Once a UDP
session's keys exist it hands the session's data channel to a worker: worker k owns UDP socket k
of an SO_REUSEPORT group (a classic-BPF program steers P_DATA_V2 packets there by peer-id, and
everything else to the control process), TUN queue k, and its sessions' keys. Counters live in a
shared-memory table the control process reads for keepalive, accounting and `sessions`.
Packets that the kernel's TUN queue choice sends to the wrong process are forwarded to their
owner over a datagram socket (docs/dataplane.md).
"""
