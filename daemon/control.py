"""The control socket: a Unix stream socket speaking JSON lines, for root only.

Each request is one JSON object on one line, ``{"command": "status"}``,
``{"command": "up", "name": "dc1-net"}`` or ``{"command": "rekey", "name": "dc1-net",
"ike": true}`` (the IKE SA instead of the CHILD SAs); each answer is one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. The socket file
is created mode 0600 and every client's credentials are checked with SO_PEERCRED,
so a file-permission mistake alone does not open the daemon to other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/lockgate/lockgate.sock"
MAX_REQUEST_BYTES = 64 * 1024
"""A request line longer than this is refused (a client cannot make us buffer more)."""
MAX_REQUEST_DEPTH = 8
"""Nesting of arrays and objects allowed in a request: the commands need two levels.
Deeper input is refused before it is parsed, so that no request can drive the JSON
decoder into a RecursionError."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to complete a request line once it is connected (or after
its previous answer). The CLI sends its one line at once; a client that stalls
half-way is closed quickly instead of holding a place for long."""
MAX_CLIENTS = 64
"""Connections reading a request at once; more get an immediate "busy" answer."""
MAX_RUNNING = 16
"""Requests executed at once. Reading does not hold one of these places, so stalled
clients cannot keep the operator's `lockgate status` waiting."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""Runs one request (already parsed) and returns its JSON-serialisable result."""


class ControlError(Exception):
    """A request the daemon refuses; the message is sent to the client."""


class ControlClientError(Exception):
    """The CLI could not talk to the daemon, or the daemon answered with an error."""


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@dataclass
class ControlServer:
    """Serves control requests on a Unix socket until closed."""

    path: str
    """Filesystem path of the socket."""
    handler: Handler
    """Executes a parsed request."""
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({0, os.geteuid()}))
    """Client uids accepted: root, and the daemon's own user (a root daemon: root only)."""
    _server: asyncio.AbstractServer | None = None
    _clients: int = 0
    _running: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_RUNNING))

    async def start(self) -> None:
        """Create the socket file (0600, parent 0755) and start accepting clients."""
        sock_path = Path(self.path)
        sock_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_stale_socket(sock_path)
        old_umask = os.umask(0o177)  # the file exists with 0600 from the first instant
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=self.path, limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, and remove the socket file."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid not in self.allowed_uids:
            log.warning("control: refused a client with uid %d", uid)
            await _send(writer, {"ok": False, "error": "permission denied: root only"})
            writer.close()
            return
        if self._clients >= MAX_CLIENTS:
            log.warning("control: %d clients connected, refused one more", self._clients)
            with contextlib.suppress(ConnectionError):
                await _send(writer, {"ok": False, "error": "busy: too many control clients"})
            writer.close()
            return
        self._clients += 1
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except (ValueError, asyncio.LimitOverrunError):
                await _send(writer, {"ok": False, "error": "request too long"})
                return
            if not line:
                return
            async with self._running:
                answer = await self._answer(line)
            await _send(writer, answer)

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if _nesting(line) > MAX_REQUEST_DEPTH:
            return {"ok": False, "error": f"request nested deeper than {MAX_REQUEST_DEPTH} levels"}
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'request must be an object with a "command" string'}
        try:
            result = await self.handler(request)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:
            # A bug in one command must not take the daemon down; the operator gets
            # the traceback in the log and the client a short answer.
            log.exception("control: command %r failed", request["command"])
            return {"ok": False, "error": "internal error (see the daemon's log)"}
        return {"ok": True, "result": result}


def _nesting(line: bytes) -> int:
    """The deepest nesting of arrays and objects in ``line``, brackets inside strings
    not counted. Malformed text may give any figure: the decoder judges it after."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file left by a dead daemon; refuse to clobber a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise ControlError(f"another daemon is listening on {path}")
    finally:
        probe.close()


def request(path: str, message: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one request to the daemon at ``path`` and return its result (blocking).

    Raises ControlClientError with a message for the operator when the daemon is not
    reachable or refuses the request.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlClientError(
                f"no daemon control socket at {path} (is `lockgate daemon` running?)"
            ) from None
        except PermissionError:
            raise ControlClientError(f"permission denied on {path}: run as root") from None
        except OSError as exc:
            raise ControlClientError(f"cannot connect to {path}: {exc.strerror}") from None
        # A daemon that refuses us answers and hangs up at once, maybe before our
        # request is out: the refusal is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(message).encode() + b"\n")
        try:
            answer = _read_line(sock)
        except ConnectionResetError:
            raise ControlClientError("the daemon closed the connection") from None
    except TimeoutError:
        raise ControlClientError(f"the daemon did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(answer)
    except ValueError:
        raise ControlClientError("the daemon sent an answer that is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlClientError("the daemon sent a malformed answer")
    if not reply.get("ok"):
        raise ControlClientError(str(reply.get("error", "request failed")))
    return reply.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > 16 * 1024 * 1024:
            raise ControlClientError("the daemon's answer is too long")
    return b"".join(chunks)
