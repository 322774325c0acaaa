"""The control socket answers every request with one JSON line and survives bad input."""

import asyncio
import socket
import stat

import pytest

from p2sgw.control import ControlError, GatewayNotRunning, control_request, socket_path, start_control_server


async def handler(request: dict) -> dict:
    if request.get("op") == "boom":
        raise RuntimeError("handler exploded")
    if request.get("op") == "sync":
        return {"ok": True, "sync": True}
    await asyncio.sleep(0)
    return {"ok": True, "echo": request}


def raw_exchange(path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        return sock.makefile("rb").readline()


def run_with_server(state_dir, client_calls, handler=handler):
    async def main():
        server = await start_control_server(socket_path(state_dir), handler)
        try:
            return await asyncio.to_thread(client_calls)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_roundtrip_and_bad_input(tmp_path):
    def calls():
        path = socket_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        results = [control_request(tmp_path, {"op": "sessions", "x": [1, 2]})]
        results.append(raw_exchange(path, b"{not json\n"))
        results.append(raw_exchange(path, b"[1, 2]\n"))
        results.append(control_request(tmp_path, {"op": "boom"}))
        results.append(control_request(tmp_path, {"op": "sync"}))
        return results

    echo, bad_json, not_object, boom, sync = run_with_server(tmp_path, calls)
    assert echo == {"ok": True, "echo": {"op": "sessions", "x": [1, 2]}}
    assert b'"ok": false' in bad_json and b"bad JSON" in bad_json
    assert b"JSON object" in not_object
    assert boom == {"ok": False, "error": "handler exploded"}
    assert sync == {"ok": True, "sync": True}


def test_sync_handler(tmp_path):
    response = run_with_server(tmp_path, lambda: control_request(tmp_path, {"op": "x"}), handler=lambda r: {"ok": True})
    assert response == {"ok": True}


def test_stale_socket_replaced(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(tmp_path)))
    stale.close()  # leaves the file behind, like a crashed gateway
    assert run_with_server(tmp_path, lambda: control_request(tmp_path, {"op": "sync"}))["ok"]


def test_refuses_to_steal_a_live_socket(tmp_path):
    async def main():
        server = await start_control_server(socket_path(tmp_path), handler)
        try:
            with pytest.raises(ControlError, match="already listening"):
                await start_control_server(socket_path(tmp_path), handler)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_gateway_not_running(tmp_path):
    with pytest.raises(GatewayNotRunning, match="not running"):
        control_request(tmp_path, {"op": "sessions"})
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(tmp_path)))
    stale.close()
    with pytest.raises(GatewayNotRunning):
        control_request(tmp_path, {"op": "sessions"})
