"""A pytest plugin: the session fails if a process it started is still alive at its end.

Every process a test starts inherits the environment, so a marker put there when the session starts names
every process it started, grandchildren included (an engine under a neuron, a neuron under a gateway). The
marker is unique to the session, so another pytest session running beside this one (another checkout, another
helper) is never mistaken for ours. At the end, any live process whose initial environment holds the marker
was left behind by a fixture or test that did not stop what it started: it is stopped, and the session fails
naming it, instead of running on for hours after the suite (a neuron whose model load failed before its
fixture's `yield` once did).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

import pytest

MARKER = "CORTEX_TEST_SESSION"
STOP_GRACE_S = 5.0  # a leftover gets SIGTERM and this long to exit before SIGKILL
# A process already on its way out when the last test ends is not a leftover: a neuron told by a parent-death
# signal that its gateway was killed, an engine reaper finishing its grace. Each gets this long to end by
# itself; only what is still running after it was left behind. (A real leftover costs the session this long.)
SETTLE_S = float(os.environ.get("CORTEX_LEFTOVER_SETTLE_S", "20"))
TOKEN = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TOKEN] = os.environ[MARKER] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session) -> None:
    left = still_running(session.config.stash[TOKEN], SETTLE_S)
    if not left:
        return
    stop(left)
    report(session.config, left)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def still_running(token: str, settle_s: float) -> dict[int, str]:
    """The marked processes still alive once those ending by themselves have had `settle_s` to do so."""
    deadline = time.monotonic() + settle_s
    while (left := marked_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling for an exit: no event tells a process that is not our child has ended
    return left


def marked_processes(token: str) -> dict[int, str]:
    """pid -> command line of each live process started with this session's marker (never pytest itself)."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:  # a process may end, or belong to another user, while we look: neither is ours to report
            with open(f"/proc/{entry}/environ", "rb") as env:
                if needle not in env.read().split(b"\0"):  # a zombie's is empty: it has already ended
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                found[int(entry)] = cmd.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def stop(processes: dict[int, str]) -> None:
    """SIGTERM each (a neuron unloads and exits), SIGKILL those still alive after STOP_GRACE_S."""
    for pid in processes:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in processes:
        if alive(pid):
            _signal(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (ended, waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except OSError:  # ended meanwhile
        pass


def report(config: pytest.Config, processes: dict[int, str]) -> None:
    lines = [f"{len(processes)} process(es) this session started outlived it (stopped now); a fixture or test "
             "did not stop what it started:", *(f"  pid {pid}: {cmd}" for pid, cmd in sorted(processes.items()))]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join(lines), file=sys.stderr)
        return
    reporter.write("\n")  # after the progress line, which ends with no newline
    reporter.write_sep("=", "processes left behind", red=True)
    for line in lines:
        reporter.write_line(line, red=True)
