"""`lockgate ...` run in-process, as a test calls it: argv in; exit code, stdout and
stderr out."""

from __future__ import annotations

import io

import pytest

from daemon.cli import main


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    """`lockgate *argv`, with `stdin` as standard input (a password, for example)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
