"""The small process between the neuron and an engine, so that no engine outlives the neuron.

    python -m neuron.engine.external.reaper GRACE_S -- ENGINE ARGS...

The neuron starts the reaper as the leader of a new process group; the reaper
runs the engine in that group, where the engine's own workers (vLLM and SGLang
fork several) land too. The kernel sends the reaper SIGTERM when the neuron
dies, however it dies (PR_SET_PDEATHSIG; a neuron killed with -9 included).
On SIGTERM, from the kernel or from the neuron's stop, the reaper sends SIGTERM
to the whole group, waits GRACE_S for the engine, then SIGKILLs the group. When
the engine exits on its own, the reaper kills what is left of the group (its
orphaned workers) and exits with the engine's status, which the neuron sees.
Standard library only: it starts fast and imports nothing of the neuron.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def _group(sig: int) -> None:
    try:
        os.killpg(0, sig)
    except ProcessLookupError:
        pass


def _kill_others() -> None:
    """SIGKILL every other process of our group (found in /proc): we stay, to report the engine's status."""
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.getpgid(int(name)) == group:
                os.kill(int(name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def main(argv: list[str]) -> int:
    grace, _, command = float(argv[0]), argv[1], argv[2:]
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.getppid()
    engine = subprocess.Popen(command)
    stopping = {"at": None}

    def stop(_signum, _frame) -> None:
        if stopping["at"] is None:
            stopping["at"] = time.monotonic()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # our own group-wide SIGTERM must not stop us
            _group(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while engine.poll() is None:
        if os.getppid() != parent:  # the neuron is gone and the death signal was missed (a race at start)
            stop(None, None)
        if stopping["at"] is not None and time.monotonic() - stopping["at"] > grace:
            break
        time.sleep(0.1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_others()  # the engine's workers, and the engine itself if it outstayed its grace
    status = engine.wait()
    return 128 - status if status < 0 else status  # a signal's death as the shell reports it (137 for -9)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
