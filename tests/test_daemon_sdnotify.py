"""sd_notify by hand, and journald-friendly log lines."""

from __future__ import annotations

import io
import logging
import os
import socket
from pathlib import Path

from daemon.sdnotify import JournalFormatter, Notifier, setup_logging, under_systemd


def test_notify_sends_key_value_lines_to_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        assert notifier.notify(READY=1, STATUS="1 tunnel up")
        assert server.recv(4096) == b"READY=1\nSTATUS=1 tunnel up"


def test_notify_abstract_socket() -> None:
    name = f"lockgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify(WATCHDOG=1)
        assert server.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_does_nothing(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.notify(READY=1)
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify(READY=1)


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid() -> None:
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 2.0
    other = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


def test_journal_formatter_has_priority_and_no_timestamp() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("daemon.gateway", logging.WARNING, "", 0, "two\nlines", None, None)
    assert formatter.format(record) == "<4>daemon.gateway: two\n<4>lines"


def test_setup_logging_picks_format_from_environment() -> None:
    assert under_systemd({"INVOCATION_ID": "abc"})
    assert under_systemd({"JOURNAL_STREAM": "8:123"})
    assert not under_systemd({})
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("debug", {"INVOCATION_ID": "x"})
        assert isinstance(root.handlers[0].formatter, JournalFormatter)
        assert root.level == logging.DEBUG
        setup_logging("warning", {})
        handler = root.handlers[0]
        assert not isinstance(handler.formatter, JournalFormatter)
        assert root.level == logging.WARNING
        stream = io.StringIO()
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        logging.getLogger("x").warning("hello")
        assert "WARNING" in stream.getvalue() and "x: hello" in stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_one_subsystem_can_log_more_than_the_rest() -> None:
    # Every daemon module logs under its own name (daemon.events, daemon.routes, ...):
    # raising one of them shows its lines, named, while the others keep the level.
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    events = logging.getLogger("daemon.events")
    try:
        setup_logging("warning", {})
        stream = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        events.setLevel(logging.DEBUG)
        events.debug("one subsystem")
        logging.getLogger("daemon.gateway").info("the rest")
        assert "daemon.events: one subsystem" in stream.getvalue()
        assert "the rest" not in stream.getvalue()
    finally:
        events.setLevel(logging.NOTSET)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
