"""One engine child process: started under a reaper in its own process group, watched, measured, stopped.

No engine may outlive the neuron. The engine runs under `reaper` (see there),
the leader of a new process group that the engine's workers join: a stop sends
SIGTERM to the group, waits, then SIGKILL; a neuron that dies, even by kill -9,
makes the kernel signal the reaper, which takes the group down. What the engine
prints goes to a log file whose last lines explain a failed start. Memory is
measured, not estimated: the resident memory of the process tree on the CPU, the
NVML per-process memory on a GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("cortex.neuron.engine.external.process")
STOP_GRACE_S = 20.0


REAPER = Path(__file__).with_name("reaper.py")
# What an error quotes of an engine's log: its end only. A log line can be a whole prompt (an engine run
# with --verbose logs them), so neither the file nor a line is read whole.
TAIL_BYTES = 64 * 1024
LINE_CHARS = 1000


def tail_lines(path: Path, n: int) -> str:
    """The last `n` lines of the file's last TAIL_BYTES, each cut to LINE_CHARS; "" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = f.read(TAIL_BYTES)
    except OSError:
        return ""
    lines = tail.decode("utf-8", errors="replace").strip().splitlines()[-n:]
    return "\n".join(line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " [...]" for line in lines)


class EngineProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        # Started from the event loop's thread, which lives as long as the neuron: the reaper's death signal
        # follows the thread that forked it, so a worker thread that ended would take the engine with it.
        reaper = [sys.executable, str(REAPER), str(STOP_GRACE_S), "--", *argv]  # standard library only: by path
        self.proc = subprocess.Popen(reaper, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.info("started %s (pid %d)", Path(argv[0]).name, self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_lines(self, n: int = 20) -> str:
        """The end of what the engine printed: why a start failed, in its own words."""
        return tail_lines(self.log_path, n)

    def pids(self) -> list[int]:
        """The engine and every process it forked (vLLM and SGLang run workers)."""
        try:
            import psutil

            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except Exception:  # noqa: BLE001 - gone, or psutil unavailable: the root alone
            return [self.proc.pid]

    def rss_mb(self) -> float:
        import psutil

        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def gpu_mb(self, nvml) -> float:
        """NVML's per-process GPU memory of the engine's processes, on every GPU."""
        if not getattr(nvml, "available", False):
            return 0.0
        mine, total = set(self.pids()), 0
        nv = nvml.pynvml
        for index in range(nvml.count()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.pid in mine and p.usedGpuMemory:
                    total += p.usedGpuMemory
        return total / 2**20

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM to the group, then SIGKILL after `grace_s`; returns the exit status."""
        if self.alive():
            self._signal_group(signal.SIGTERM)  # the reaper waits its own grace, then SIGKILLs the rest
            deadline = time.monotonic() + grace_s + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._signal_group(signal.SIGKILL)  # whatever is left, the reaper too
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("engine pid %d did not die after SIGKILL", self.proc.pid)
        self._log.close()
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
