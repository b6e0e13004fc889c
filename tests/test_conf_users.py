"""The users file of a P2C server: scrypt hashes, the password rule, 0600, atomic writes."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from conf.users import (
    User,
    hash_password,
    load_users,
    password_problem,
    save_users,
    verify_password,
)
from ikev2.config import ConfigError


@pytest.mark.parametrize(
    ("name", "password", "problem"),
    [
        ("alice", "Short1", "8 to 32 characters"),
        ("alice", "x" * 33, "8 to 32 characters"),
        ("alice", "alllowercase", "at least two of"),
        ("alice", "12345678", "at least two of"),
        ("Alice1234", "alice1234", "must not be the user name"),
        ("alice", "correct horse", None),  # lower case and a space
        ("alice", "Abcdefgh", None),
        ("alice", "abcd1234", None),
    ],
)
def test_the_password_rule(name: str, password: str, problem: str | None) -> None:
    found = password_problem(name, password)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_hash_verifies_its_password_only_and_is_salted() -> None:
    stored = hash_password("Tr0ub4dor&3")
    user = User("alice", password=stored)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password(user, "Tr0ub4dor&3")
    assert not verify_password(user, "Tr0ub4dor&4")
    assert not verify_password(User("bob"), "Tr0ub4dor&3")  # no password at all
    assert hash_password("Tr0ub4dor&3") != stored  # a fresh salt each time
    assert not verify_password(User("eve", password="scrypt$1$1$1$!!$!!"), "x")


def test_save_then_load_round_trips_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "office.users"
    users = {
        "alice": User("alice", "engineering", ipaddress.ip_address("192.0.2.50"), "scrypt$x"),
        "bob": User("bob", password="scrypt$y", nt_hash=bytes(range(16))),
    }
    save_users(path, users)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_users(path) == users
    assert [p.name for p in tmp_path.iterdir()] == ["office.users"]  # no temporary left
    assert "scrypt" not in repr(users["alice"])


def test_a_missing_file_has_no_users(tmp_path: Path) -> None:
    assert load_users(tmp_path / "absent") == {}


def test_a_readable_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "office.users"
    save_users(path, {"alice": User("alice")})
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"mode 644; chmod 600"):
        load_users(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a users file"),
        ('{"version": 2, "users": {}}', "version 1"),
        ('{"version": 1, "users": []}', '"users" must be an object'),
        ('{"version": 1, "users": {"a b": {}}}', "users.a b: not a valid user name"),
        ('{"version": 1, "users": {"al": {"group": 3}}}', "users.al: group must be a string"),
        ('{"version": 1, "users": {"al": {"x": 1}}}', "users.al: unknown field 'x'"),
        ('{"version": 1, "users": {"al": {"static_ip": "nope"}}}', "users.al: "),
    ],
)
def test_a_malformed_file_names_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "office.users"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"office\.users") as caught:
        load_users(path)
    assert message in str(caught.value)
