"""llama.cpp's own log, through Python's logging: its lines take the neuron's format (`--log-format json`
included) instead of reaching stderr raw.

llama-cpp-python installs a callback that prints to stderr by a table of levels that no longer matches
ggml's (ggml.h now numbers DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5), so its "quiet" setting let every
warning through, unformatted (`llama_context: n_ctx_seq (8192) > n_ctx_train (2048) ...`). This one
replaces it. llama.cpp writes a line in pieces (CONT continues the last piece, a newline ends a line),
so pieces are joined per thread (two models may load at once) and each whole line is one record.

llama.cpp's INFO is a load's every tensor and buffer, hundreds of lines: it is logged at debug, where
`--log-level debug` shows it; WARN and ERROR keep their levels.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger("cortex.neuron.llama_cpp")

CONT = 5  # GGML_LOG_LEVEL_CONT: more of the previous message
LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
MAX_PENDING = 4096  # characters of an unfinished line (a progress bar of dots) held before it is logged anyway


class LineJoiner:
    """Pieces of llama.cpp's messages in, one `emit(level, line)` per whole line out."""

    def __init__(self, emit):
        self._emit = emit
        self._local = threading.local()

    def feed(self, level: int, text: str) -> None:
        state = self._local
        pending = getattr(state, "pending", "")
        if level != CONT:  # a new message: what an earlier one left unfinished is a line of its own
            self._flush(state, pending)
            pending, state.level = "", LEVELS.get(level, logging.INFO)
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            self._flush(state, line)
        if len(pending) > MAX_PENDING:
            self._flush(state, pending)
            pending = ""
        state.pending = pending

    def _flush(self, state, line: str) -> None:
        if line.strip():
            self._emit(getattr(state, "level", logging.DEBUG), line.rstrip())


_joiner = LineJoiner(lambda level, line: log.log(level, "%s", line))
_callback = None  # the C function pointer: kept alive for as long as llama.cpp may call it


def route_llama_log(llama_cpp) -> None:
    """Send llama.cpp's log (ggml's too: llama_log_set sets both) to the `cortex.neuron.llama_cpp` logger."""
    global _callback
    if _callback is not None:
        return

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes | None, _user_data) -> None:
        try:
            _joiner.feed(level, text.decode("utf-8", errors="replace") if text else "")
        except Exception:  # noqa: BLE001 - an exception here would be printed raw by ctypes, and lost
            pass

    import llama_cpp._logger  # noqa: F401 - it installs its own callback on import: ours must come after

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    _callback = on_log


def route_mtmd_log(llama_cpp, mtmd) -> None:
    """The same for llama.cpp's multimodal library (mtmd and its helpers), which logs apart: a projector's
    load and each image's encoding would otherwise go raw to stderr."""
    route_llama_log(llama_cpp)
    mtmd.mtmd_log_set(_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
