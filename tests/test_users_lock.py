"""The users file's lock: concurrent writers (`lockgate user`, the web console) lose no
change, the lock file is owner-only, and a writer that cannot get it gives up naming it."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from conf import users as users_module
from conf.users import load_users, lock_file, users_lock
from daemon.remote_access_cli import add_user
from ikev2.config import ConfigError
from testkit.p2c_config import config

PER_WRITER = 40
WAIT = 60.0
"""Generous bound for children and threads on a loaded machine (never reached when it works)."""

# Real processes, as two `lockgate user add` commands are: fork copies the test's state.
FORK = multiprocessing.get_context("fork")


def _add_many(tmp: str, prefix: str, start: Barrier) -> None:
    server = config(Path(tmp), auth="certificate")
    start.wait(WAIT)
    for i in range(PER_WRITER):
        add_user(server, f"{prefix}{i}", group=None, static_ip=None, password=None)


def test_two_processes_adding_users_at_once_lose_none(tmp_path: Path) -> None:
    # Certificate users need no scrypt hash, so each add is a quick read-modify-write
    # and the two writers overlap all the time: without the lock, adds are lost.
    start = FORK.Barrier(2)
    writers = [
        FORK.Process(target=_add_many, args=(str(tmp_path), prefix, start)) for prefix in "ab"
    ]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(WAIT)
    assert [proc.exitcode for proc in writers] == [0, 0]
    expected = {f"{p}{i}" for p in "ab" for i in range(PER_WRITER)}
    assert set(load_users(tmp_path / "office.users")) == expected


def test_the_lock_file_is_owner_only_beside_the_users_file(tmp_path: Path) -> None:
    server = config(tmp_path, auth="certificate")
    users = tmp_path / "office.users"
    old = os.umask(0)  # the mode must come from the code, not from a strict umask
    try:
        add_user(server, "alice", group=None, static_ip=None, password=None)
    finally:
        os.umask(old)
    lock = lock_file(users)
    assert lock == tmp_path / "office.users.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert stat.S_IMODE(users.stat().st_mode) == 0o600


def _hold(lock_path: str, held: Event, release: Event) -> None:
    with users_lock(Path(lock_path)):
        held.set()
        release.wait(WAIT)


def test_a_second_writer_waits_for_the_lock_then_writes(tmp_path: Path) -> None:
    server = config(tmp_path, auth="certificate")
    users = tmp_path / "office.users"
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(users), held, release))
    holder.start()
    try:
        assert held.wait(WAIT)
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                add_user(server, "alice", group=None, static_ip=None, password=None)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(0.5)
        # Still waiting: it cannot have written while the other process holds the lock.
        assert thread.is_alive() and not users.exists()
        release.set()
        thread.join(WAIT)
        assert not thread.is_alive() and errors == []
        assert set(load_users(users)) == {"alice"}
    finally:
        release.set()
        holder.join(WAIT)


def test_a_held_lock_times_out_naming_the_file_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = config(tmp_path, auth="certificate")
    users = tmp_path / "office.users"
    add_user(server, "alice", group=None, static_ip=None, password=None)
    before = users.read_bytes()
    monkeypatch.setattr(users_module, "LOCK_TIMEOUT", 0.3)
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(users), held, release))
    holder.start()
    try:
        assert held.wait(WAIT)
        with pytest.raises(ConfigError) as caught:
            add_user(server, "bob", group=None, static_ip=None, password=None)
    finally:
        release.set()
        holder.join(WAIT)
    message = str(caught.value)
    assert str(users) in message and str(lock_file(users)) in message
    assert "0.3 s" in message
    assert users.read_bytes() == before
