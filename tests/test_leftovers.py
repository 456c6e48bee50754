"""The session's leftover check (tests/leftovers.py), proved on small pytest sessions of its own.

Each runs in a subprocess with only the plugin: one whose fixture leaks a `sleep` must fail, name it and
leave it dead; one whose leaked process ends by itself within the settle time must pass; a clean one must
pass, even with a process of another session (another marker) alive beside it, which it must not touch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.leftovers import MARKER, alive

LEAKY = '''
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def leaky():
    proc = subprocess.Popen(["sleep", "600"])
    Path("leaked.pid").write_text(str(proc.pid))
    yield  # and never stopped


def test_leaks(leaky):
    pass
'''
ENDING = LEAKY.replace('"600"', '"2"')
CLEAN = '''
import subprocess


def test_stops_what_it_starts():
    proc = subprocess.Popen(["sleep", "600"])
    proc.kill()
    proc.wait()
'''


def session(folder: Path, source: str, settle_s: float = 1.0) -> subprocess.CompletedProcess:
    """A pytest session over one test file, with the leftover plugin alone."""
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_inner.py").write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.leftovers",
                           "test_inner.py"], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CORTEX_LEFTOVER_SETTLE_S": str(settle_s)})


def test_a_process_left_behind_fails_the_session_and_is_stopped(tmp_path):
    done = session(tmp_path / "leaky", LEAKY)
    pid = int((tmp_path / "leaky" / "leaked.pid").read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "processes left behind" in done.stdout, done.stdout
    assert f"pid {pid}: sleep 600" in done.stdout, done.stdout
    assert not alive(pid), "the leftover must not outlive the session that reported it"


def test_a_process_that_ends_by_itself_within_the_settle_time_is_no_leftover(tmp_path):
    done = session(tmp_path / "ending", ENDING, settle_s=60)
    pid = int((tmp_path / "ending" / "leaked.pid").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left behind" not in done.stdout, done.stdout
    assert not alive(pid)


def test_a_clean_session_passes_and_leaves_another_sessions_processes_alone(tmp_path):
    other = subprocess.Popen(["sleep", "600"], env={**os.environ, MARKER: "another-session"})
    try:
        done = session(tmp_path / "clean", CLEAN)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "left behind" not in done.stdout, done.stdout
        assert alive(other.pid)
    finally:
        other.kill()
        other.wait()
