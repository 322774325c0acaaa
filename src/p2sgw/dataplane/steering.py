"""Steer UDP datagrams to the process that owns their session: an SO_REUSEPORT group plus a
classic-BPF program (SO_ATTACH_REUSEPORT_CBPF) that reads the OpenVPN header.

The kernel runs the program with the UDP payload at offset 0 and uses its return value as an
index into the group's sockets, in the order they were bound: socket 0 is the control process,
socket k the data worker k. P_DATA_V2 packets carry a 24-bit peer-id; worker = peer_id % N + 1.
Everything else (control packets, P_DATA_V1, runts) goes to socket 0. The sockets are all made
and bound here, once, and stay open in the control process for the gateway's lifetime, so the
order never changes (a closed member would be replaced by the last one and move the indexes).
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
P_DATA_V2 = 9

# classic BPF opcodes (linux/filter.h)
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20
_ALU_RSH_K, _ALU_AND_K, _ALU_MOD_K, _ALU_ADD_K = 0x74, 0x54, 0x94, 0x04
_JMP_JEQ_K = 0x15
_RET_A, _RET_K = 0x16, 0x06
_insn = struct.Struct("HBBI")


def worker_of_peer_id(peer_id: int, workers: int) -> int:
    """The data worker (1..workers) whose socket the steering program picks for `peer_id`."""
    return peer_id % workers + 1


def steering_program(workers: int) -> bytes:
    if not 1 <= workers <= 255:
        raise ValueError("1 to 255 data workers")
    program = [
        (_LD_B_ABS, 0, 0, 0),  # A = payload[0] (a runt: the load fails, the program returns 0)
        (_ALU_RSH_K, 0, 0, 3),  # A = opcode
        (_JMP_JEQ_K, 0, 5, P_DATA_V2),  # not P_DATA_V2: to "return 0"
        (_LD_W_ABS, 0, 0, 0),  # A = payload[0:4], big-endian
        (_ALU_AND_K, 0, 0, 0xFFFFFF),  # A = peer-id
        (_ALU_MOD_K, 0, 0, workers),
        (_ALU_ADD_K, 0, 0, 1),
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, 0),  # the control process
    ]
    return b"".join(_insn.pack(*insn) for insn in program)


def attach_steering(sock: socket.socket, workers: int) -> None:
    code = steering_program(workers)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // _insn.size, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def reuseport_group(host: str, port: int, workers: int, buffer_bytes: int = 4 << 20) -> list[socket.socket]:
    """workers + 1 UDP sockets on one address, bound in index order, steering attached."""
    socks = []
    try:
        for _ in range(workers + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            sock.bind((host, port if not socks[1:] else socks[0].getsockname()[1]))
            sock.setblocking(False)
        if workers:
            attach_steering(socks[0], workers)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
