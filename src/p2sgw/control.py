"""The control socket (`state_dir/control.sock`): one JSON request line in, one JSON response line out.

The CLI talks to a running gateway through it. The socket is 0600, so only root (or the gateway's user) may
list or disconnect sessions.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 1 << 20
# A client that connects and then says nothing must not hold a connection forever.
REQUEST_READ_TIMEOUT = 10.0
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

Handler = Callable[[dict], "dict | Awaitable[dict]"]
log = logging.getLogger(__name__)


class ControlError(RuntimeError):
    """The control request could not be completed; the message is meant for the operator."""


class GatewayNotRunning(ControlError):
    pass


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


async def start_control_server(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on path, replacing a stale socket file but refusing to steal one a live gateway answers on."""
    path = Path(path)
    _check_path_length(path)
    if path.is_socket():
        if _answers(path):
            raise ControlError(f"another gateway is already listening on {path}")
        path.unlink()
    elif path.exists():
        raise ControlError(f"{path} exists and is not a socket")

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await _respond(reader, handler)
            if response is not None:
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve_connection, path=str(path), limit=MAX_REQUEST_BYTES)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return server


async def _respond(reader: asyncio.StreamReader, handler: Handler) -> dict | None:
    """The response to the connection's request line; None when the client hung up without asking."""
    try:
        line = await asyncio.wait_for(reader.readline(), REQUEST_READ_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": "no request received"}
    except ValueError:  # line longer than the stream limit
        return {"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"}
    if not line:
        return None
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"bad JSON: {exc}"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    try:
        response = handler(request)
        if inspect.isawaitable(response):
            response = await response
    except Exception as exc:  # a faulty request must never take the control server down
        log.exception("control request %r failed", request.get("op"))
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    if not isinstance(response, dict):
        log.error("control handler returned %r, not a dict", type(response).__name__)
        return {"ok": False, "error": "internal error: handler returned no object"}
    return response


def control_request(state_dir: Path, request: dict, timeout: float = 5.0) -> dict:
    """Send one request to the running gateway and return its response."""
    path = socket_path(state_dir)
    _check_path_length(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise GatewayNotRunning(f"the gateway is not running (no listener on {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the gateway's user (root)") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the gateway did not answer within {timeout:g} s") from None
        except ConnectionError as exc:
            raise ControlError(f"the gateway closed the control connection: {exc}") from None
    try:
        response = json.loads(data)
    except ValueError:
        raise ControlError(f"the gateway sent an invalid response: {data[:200]!r}") from None
    if not isinstance(response, dict):
        raise ControlError("the gateway sent a response that is not a JSON object")
    return response


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    data = b"".join(chunks)
    if not data:
        raise ControlError("the gateway closed the control connection without answering")
    return data.split(b"\n", 1)[0]


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def _check_path_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ControlError(f"control socket path too long for a unix socket (max 107 bytes): {path}")
