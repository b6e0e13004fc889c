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


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 60_000 + b"\n",  # drove json.loads into RecursionError
        b'{"command": "status", "x": ' + b"[" * 9 + b"]" * 9 + b"}\n",
    ],
)
def test_deeply_nested_request_gets_a_clean_error(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        try:
            answer = await asyncio.to_thread(_raw, path, line)
            assert b'"ok":false' in answer and b"nested deeper than" in answer
            # The server is still there, and still answers.
            result = await asyncio.to_thread(request, str(path), {"command": "status"})
            assert result["connections"][0]["name"] == "dc1-net"
        finally:
            await server.close()

    asyncio.run(main())


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        try:
            message = {"command": "frob", "name": '[[[[[[[[[[[[\\"{{{{{{{{{{{'}
            with pytest.raises(ControlClientError, match="unknown command 'frob'"):
                await asyncio.to_thread(request, str(path), message)
        finally:
            await server.close()

    asyncio.run(main())


def test_stalled_clients_neither_block_the_operator_nor_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.control as control

    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.5)
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        stalled = []
        try:
            # More half-written requests than requests may run at once.
            for _ in range(control.MAX_RUNNING + 4):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(path))
                s.sendall(b'{"command": "sta')
                stalled.append(s)
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await asyncio.to_thread(request, str(path), {"command": "status"}, 5.0)
            assert result["connections"][0]["state"] == "up"
            assert loop.time() - started < control.REQUEST_TIMEOUT
            # Past the request timeout each stalled client has been closed.
            await asyncio.sleep(control.REQUEST_TIMEOUT + 0.5)
            for s in stalled:
                s.settimeout(2)
                assert await asyncio.to_thread(s.recv, 100) == b""
        finally:
            for s in stalled:
                s.close()
            await server.close()

    asyncio.run(main())


def test_clients_beyond_the_limit_are_told_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.control as control

    monkeypatch.setattr(control, "MAX_CLIENTS", 2)
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = _serve(path)
        await server.start()
        held = []
        try:
            for _ in range(2):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(path))
                held.append(s)
            await asyncio.sleep(0.1)
            with pytest.raises(ControlClientError, match="busy: too many control clients"):
                await asyncio.to_thread(request, str(path), {"command": "status"}, 5.0)
        finally:
            for s in held:
                s.close()
            await server.close()

    asyncio.run(main())
