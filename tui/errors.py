"""What the chat does with an error nobody expected: one line, a private log, and go on."""

from __future__ import annotations

import functools
import inspect
import time

from localllm.errorlog import log_exception, redact


class ErrorReporting:
    """For the App: unexpected errors are reported in one line (see guarded), never with
    Textual's crash screen. The host provides _error(line), which shows a line in the app."""

    fatal_error: str | None = None  # the one line to print if an error ended the app
    _recent_errors: tuple[float, ...] = ()

    def _report_unexpected(self, error: Exception) -> None:
        """An unexpected error in a handler or on the engine thread: logged with its traceback
        (no local variables, no secrets), said in one line, and the app goes on, unless they keep
        coming (then it ends with exit status 1)."""
        line = self._unexpected_line(error)
        now = time.monotonic()
        self._recent_errors = tuple(t for t in self._recent_errors if now - t < 10) + (now,)
        if len(self._recent_errors) > 5:
            self.fatal_error = line
            self.exit(return_code=1)
            return
        self._error(line)

    def _handle_exception(self, error: Exception) -> None:
        """What Textual calls for an error nothing caught: the message loop it came from has
        stopped, so the app ends, with one line and exit status 1. Never Textual's own crash
        screen: it prints local variables, which can hold the Hub token."""
        self.fatal_error = self._unexpected_line(error)
        self.exit(return_code=1)

    @staticmethod
    def _unexpected_line(error: Exception) -> str:
        where = log_exception(error, "localllm chat")
        line = redact(f"unexpected error: {type(error).__name__}: {error}")[:300]
        return line + (f" (details in {where})" if where else "")


def guarded(method):
    """Report an unexpected error in a handler and let the app go on: left to Textual, it would
    stop the handler's message loop and end the app."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def run_async(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except Exception as error:
                self._report_unexpected(error)

        return run_async

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            self._report_unexpected(error)

    return run


