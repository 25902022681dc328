"""One line instead of a bare "Illegal instruction" (or an abort's backtrace) when llama.cpp dies.

A fault inside llama.cpp (SIGILL from CPU kernels this machine cannot run, SIGSEGV, SIGBUS)
kills the process before Python can unwind. The handler installed here runs at that moment, on
the faulting thread: it gives the terminal back if the chat had it, prints one line naming the
likely cause and the setting to try, and exits with EXIT_CRASH. The process is in an unknown
state, so it does as little as it can, with everything it writes prepared beforehand.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
from collections.abc import Callable

from .errors import EXIT_CRASH

_SIGNALS = {
    signal.SIGILL: "an illegal instruction (SIGILL)",
    signal.SIGSEGV: "a memory fault (SIGSEGV)",
    signal.SIGBUS: "a bus error (SIGBUS)",
    signal.SIGABRT: "an abort (SIGABRT)",
}
# What Textual's Linux driver undoes when it stops: mouse and paste modes, focus events, the
# keyboard protocol, the alternate screen, the hidden cursor; and line wrapping, which it turns off.
TERMINAL_RESET = (b"\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l\x1b[?2048l\x1b[?1004l\x1b[<u"
                  b"\x1b[?1049l\x1b[?25h\x1b[?7h")

_libc = None
_trampoline = None  # the C function pointer ctypes made of the handler; freed if not referenced
_restore_terminal: Callable[[], None] | None = None
_amx_in_use = False
_amx_present = False
_abort_reason: str | None = None  # what llama.cpp said as it aborted (GGML_ABORT's message)


def note_amx(present: bool, in_use: bool) -> None:
    """Whether the AMX kernels run in this process: the first suspect when llama.cpp crashes."""
    global _amx_present, _amx_in_use
    _amx_present, _amx_in_use = present, in_use


def note_abort(reason: str) -> None:
    """llama.cpp's reason for the abort() that follows (from ggml's abort callback)."""
    global _abort_reason
    # "/build/tree/ggml/src/ggml.c:1814: GGML_ASSERT(x) failed": the build folder says nothing.
    _abort_reason = re.sub(r"^\S*/(?=[^/\s]+:\d+: )", "", " ".join(reason.split()))[:300]


def message(signum: int) -> str:
    what = _SIGNALS.get(signum, f"signal {signum}")
    if signum == signal.SIGABRT:
        said = f": {_abort_reason}" if _abort_reason else ""
        return (f"localllm: error: llama.cpp aborted{said}; a llama.cpp bug or a model it cannot handle is the likely "
                "cause: --verbose shows llama.cpp's log\n")
    if _amx_in_use:
        hint = ('this CPU\'s AMX kernels are the likely cause: set LOCALLLM_AMX=off (or "amx": "off" '
                "in the settings file) to run without them")
    elif signum == signal.SIGILL:
        hint = ("llama.cpp was likely compiled for another CPU: reinstall llama-cpp-python on this machine "
                "without pip's cache (see packaging/README.md)")
    else:
        hint = "a damaged model file or a llama.cpp bug is the likely cause: --verbose shows llama.cpp's log"
    if _amx_present and not _amx_in_use and signum != signal.SIGILL:
        hint += "; on this AMX CPU also try LOCALLLM_AMX=off"
    return f"localllm: error: llama.cpp crashed with {what}; {hint}\n"


def _on_fatal_signal(signum: int) -> None:
    for number in _SIGNALS:
        _libc.signal(number, None)  # SIG_DFL: a second fault ends the process plainly
    if _restore_terminal is not None:
        try:
            _restore_terminal()
        except Exception:
            pass
    os.write(2, message(signum).encode())
    os._exit(EXIT_CRASH)


def install() -> None:
    """Catch fatal signals from here on (POSIX only; elsewhere the default stays)."""
    global _libc, _trampoline
    if _trampoline is not None or os.name != "posix":
        return
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
    _libc = ctypes.CDLL(None)
    _libc.signal.argtypes, _libc.signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    _trampoline = handler_type(_on_fatal_signal)
    for number in _SIGNALS:
        _libc.signal(number, ctypes.cast(_trampoline, ctypes.c_void_p))
    # ggml prints a gdb backtrace across the terminal before it aborts; the line above says enough.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")


def restore_terminal_on_crash(fd: int) -> None:
    """Give the terminal on fd back as it is now (modes and screen) if the process crashes."""
    import termios

    global _restore_terminal
    saved = termios.tcgetattr(fd)

    def restore() -> None:
        os.write(fd, TERMINAL_RESET)
        termios.tcsetattr(fd, termios.TCSANOW, saved)

    _restore_terminal = restore
