"""The control socket: JSON lines, 0600, SO_PEERCRED, errors as answers."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from daemon.control import ControlClientError, ControlError, ControlServer, request


async def _handler(req: dict[str, Any]) -> Any:
    if req["command"] == "status":
        return {"connections": [{"name": "dc1-net", "state": "up"}]}
    if req["command"] == "boom":
        raise RuntimeError("bug")
    raise ControlError(f"unknown command {req['command']!r}")


def _serve(path: Path, **kwargs: Any) -> ControlServer:
    return ControlServer(str(path), _handler, **kwargs)


def _raw(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        return s.recv(65536)


def test_request_round_trip_and_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "lockgate.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            result = await asyncio.to_thread(request, str(path), {"command": "status"})
            assert result == {"connections": [{"name": "dc1-net", "state": "up"}]}
            with pytest.raises(ControlClientError, match="unknown command 'frob'"):
                await asyncio.to_thread(request, str(path), {"command": "frob"})
            with pytest.raises(ControlClientError, match="internal error"):
                await asyncio.to_thread(request, str(path), {"command": "boom"})
            answer = await asyncio.to_thread(_raw, path, b"not json\n")
            assert b'"ok":false' in answer and b"not JSON" in answer
            answer = await asyncio.to_thread(_raw, path, b'["status"]\n')
            assert b"command" in answer
        finally:
            await server.close()
        assert not path.exists()

    asyncio.run(main())


def test_client_with_other_uid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        # Pretend only some other uid may talk: our own connection must be refused.
        server = _serve(path, allowed_uids=frozenset({os.geteuid() + 4242}))
        await server.start()
        try:
            with pytest.raises(ControlClientError, match="permission denied"):
                await asyncio.to_thread(request, str(path), {"command": "status"})
        finally:
            await server.close()

    asyncio.run(main())


def test_stale_socket_is_replaced_but_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening

    async def main() -> None:
        first = _serve(path)
        await first.start()
        try:
            second = _serve(path)
            with pytest.raises(ControlError, match="another daemon"):
                await second.start()
            assert await asyncio.to_thread(request, str(path), {"command": "status"})
        finally:
            await first.close()

    asyncio.run(main())


def test_client_reports_missing_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlClientError, match="no daemon control socket"):
        request(str(tmp_path / "absent.sock"), {"command": "status"})


def test_overlong_request_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        try:
            answer = await asyncio.to_thread(_raw, path, b"x" * 200_000 + b"\n")
            assert b"too long" in answer
        finally:
            await server.close()

    asyncio.run(main())
