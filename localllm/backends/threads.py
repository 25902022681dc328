"""Threads chosen per decode step, not once per load.

llama.cpp's threads spin and wait for each other at every barrier, so one core that another
process keeps busy stalls the whole team: measured on Qwen2.5-Coder-1.5B with a busy loop on one
of 2 cores, 2 threads decoded 10.9 tokens/s and 1 thread 19.6. A count chosen at load is wrong
as soon as the machine changes. llama.cpp takes a new count with every call
(`llama_set_n_threads`), so the governor watches two things while decoding:
- the other processes' CPU use (from /proc/stat, our own time subtracted), every CHECK_S;
- the time of each decode step, at each thread count.
The same holds for PyTorch's OpenMP team (the transformers engine): the starter in float32
decoded 2.1 tokens/s on 2 threads beside a busy loop, 17.7 on 1, and 28.9 on 2 when quiet.
When other processes keep part of a core busy (BUSY_CORES), it tries one thread fewer for a
short trial and keeps it only if steps are measured faster; when they let go, it tries one
more the same way. A trial that loses is undone and the next waits twice as long. On a quiet
machine nothing is tried, so nothing is lost.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

CHECK_S = 0.5
TRIAL_STEPS = 8  # decode steps timed at a trial's thread count
TRIAL_MIN_S = 0.25
BUSY_CORES = 0.4  # other processes' use, in cores, that calls the team's size into question
GAIN = 0.97  # a trial is kept when its steps take at most this share of the time before it
BACKOFF_S = (2.0, 60.0)  # wait before the next trial after one that lost: first, at most


class ThreadGovernor:
    def __init__(self, apply: Callable[[int], None], n_threads: int, adaptive: bool,
                 busy_elsewhere: Callable[[], float] | None = None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None, max_threads: int | None = None):
        """`apply(n)` gives llama.cpp the count; `busy_elsewhere()` the cores other processes used
        since its previous call (hardware.CpuLoadSampler); `adaptive` False keeps n_threads (the
        user chose it). It starts at n_threads and may go up to `max_threads` (the quiet
        machine's count: a load made while others were busy starts lower, and must not stay so)."""
        self.apply, self.current = apply, n_threads
        self.max = max(max_threads or n_threads, n_threads)
        self.adaptive = adaptive and self.max > 1
        if busy_elsewhere is None:
            from ..hardware import CpuLoadSampler

            busy_elsewhere = CpuLoadSampler().lap
        self.busy_elsewhere = busy_elsewhere
        self.clock, self.log = clock, log
        self.recent: deque[float] = deque(maxlen=TRIAL_STEPS)  # step seconds at the current count
        self.trial: tuple[int, float, float] | None = None  # (previous count, its median step, started)
        self.trial_steps: list[float] = []
        self.next_check = clock() + CHECK_S
        self.backoff = BACKOFF_S[0]
        self.hold_until = 0.0
        self.wanted = 0  # what the previous check called for: -1 fewer threads, 1 more, 0 neither

    def step(self, seconds: float) -> None:
        """After each decode step of one token per sequence, with how long it took."""
        if not self.adaptive:
            return
        now = self.clock()
        if self.trial is not None:
            self.trial_steps.append(seconds)
            if len(self.trial_steps) >= TRIAL_STEPS and now - self.trial[2] >= TRIAL_MIN_S:
                self._judge(now)
            return
        self.recent.append(seconds)
        if now < self.next_check:
            return
        self.next_check = now + CHECK_S
        busy = self.busy_elsewhere()
        # Said twice running: a passing burst is not acted on, and the steps a trial is compared
        # with were all timed under the load that prompted it.
        wants = -1 if busy >= BUSY_CORES and self.current > 1 else 1 if busy < BUSY_CORES / 2 and self.current < self.max else 0
        confirmed, self.wanted = wants != 0 and wants == self.wanted, wants
        if not confirmed or now < self.hold_until or len(self.recent) < TRIAL_STEPS // 2:
            return
        why = f"other processes use {busy:.1f} cores" if wants < 0 else "the other processes have let go"
        self._try(self.current + wants, now, why)

    def _try(self, n: int, now: float, why: str) -> None:
        self.trial = (self.current, statistics.median(self.recent), now)
        self.trial_steps = []
        self._set(n, f"trying {n} thread{'s' if n > 1 else ''}: {why}")

    def _judge(self, now: float) -> None:
        previous, before, _ = self.trial
        after = statistics.median(self.trial_steps)
        self.trial = None
        self.recent.clear()
        if after <= before * GAIN:  # the trial's steps are the new count's recent ones
            self.recent.extend(self.trial_steps)
            self.backoff = BACKOFF_S[0]
            self._say(f"keeping {self.current} threads: {before * 1000:.1f} -> {after * 1000:.1f} ms per step")
            return
        self.hold_until = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_S[1])
        self._set(previous, f"back to {previous} threads: {after * 1000:.1f} ms per step against {before * 1000:.1f}")

    def _set(self, n: int, why: str) -> None:
        self.current = n
        self.apply(n)
        self._say(why)

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)


def engine_governor(apply: Callable[[int], None], n_threads: int, chosen: int | None, max_threads: int,
             verbose: bool) -> ThreadGovernor:
    """An engine's governor: adaptive unless the user chose the count (`chosen`); with --verbose
    each change is said on stderr."""
    import sys

    return ThreadGovernor(apply, n_threads, adaptive=chosen is None, max_threads=max_threads,
                          log=(lambda text: sys.stderr.write(f"localllm: threads: {text}\n")) if verbose else None)
