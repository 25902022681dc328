"""Threads chosen per decode step: the governor's rules on a scripted machine (its clock, the
other processes' CPU use, and step times as measured on 2 cores), then the real thing: a model
decoding while another process keeps a core busy."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from localllm.backends.threads import BACKOFF_S, ThreadGovernor


class Machine:
    """A clock, other processes' load (cores) and the step time at each thread count."""

    def __init__(self, busy: float, step_ms: dict[int, float]):
        self.now, self.busy, self.step_ms = 0.0, busy, step_ms
        self.applied: list[int] = []

    def governor(self, n_threads: int = 2, adaptive: bool = True) -> ThreadGovernor:
        return ThreadGovernor(self.applied.append, n_threads, adaptive, lambda: self.busy, lambda: self.now)

    def run(self, governor: ThreadGovernor, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            took = self.step_ms[governor.current] / 1000
            self.now += took
            governor.step(took)


def test_a_quiet_machine_is_never_touched():
    machine = Machine(busy=0.05, step_ms={2: 36.0, 1: 64.0})
    governor = machine.governor()
    machine.run(governor, 60)
    assert governor.current == 2 and machine.applied == []


def test_a_busy_core_is_left_when_fewer_threads_are_measured_faster_and_taken_back_after():
    machine = Machine(busy=0.0, step_ms={2: 36.0, 1: 64.0})
    governor = machine.governor()
    machine.run(governor, 5)
    # Another process takes a core: both our threads stall at every barrier (10.9 against 19.6 tok/s).
    machine.busy, machine.step_ms = 0.7, {2: 92.0, 1: 51.0}
    machine.run(governor, 5)
    assert governor.current == 1 and machine.applied == [1]
    machine.busy = 1.0  # now it has a core of its own
    machine.run(governor, 20)
    assert governor.current == 1 and machine.applied == [1]
    machine.busy, machine.step_ms = 0.0, {2: 36.0, 1: 64.0}
    machine.run(governor, 5)
    assert governor.current == 2 and machine.applied == [1, 2]


def test_a_trial_that_loses_is_undone_and_the_next_waits_longer():
    machine = Machine(busy=0.6, step_ms={2: 40.0, 1: 64.0})  # a light neighbour: 2 threads still win
    governor = machine.governor()
    machine.run(governor, 3)
    assert governor.current == 2 and machine.applied[:2] == [1, 2]
    machine.run(governor, 120)
    trials = machine.applied.count(1)
    # Backing off from 2 s to 60 s between trials: a handful in two minutes, each 8 steps long.
    assert 2 <= trials <= 8 and governor.backoff == BACKOFF_S[1]
    assert governor.current == 2


def test_a_count_the_user_chose_is_kept():
    machine = Machine(busy=1.5, step_ms={2: 92.0, 1: 51.0})
    governor = machine.governor(adaptive=False)
    machine.run(governor, 10)
    assert governor.current == 2 and machine.applied == []


@pytest.mark.slow
def test_a_run_leaves_a_core_that_another_process_keeps_busy():
    """The starter decoding 900 tokens, and a busy loop started on one of the 2 cores after the
    model has loaded (2 threads chosen): the governor tries 1 thread, measures it faster, keeps
    it, and says so with --verbose."""
    import os

    assert len(os.sched_getaffinity(0)) >= 2, "the project's machines have 2 cores; this needs them"
    from conftest import LOCALLLM, run_cli

    # Once first, so the GGUF's metadata is cached: reading it maps the file, and the busy loop
    # must start after the load, not while the planner reads.
    assert run_cli("run", "-m", "starter", "--max-tokens", "1", "Hi").returncode == 0
    run = subprocess.Popen([*LOCALLLM, "run", "-m", "starter", "--json", "-v", "--ignore-eos", "--max-tokens", "900",
                            "-t", "0", "Tell me a long story."], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import psutil

    deadline = time.monotonic() + 60
    while psutil.Process(run.pid).memory_info().rss < 150 * 2**20:  # loaded (the interpreter and imports: 50 MB)
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(0.5)  # decoding on the 2 threads chosen at load
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out, err = run.communicate(timeout=300)
    finally:
        hog.kill()
        hog.wait()
    assert run.returncode == 0, err[-2000:]
    settings = json.loads(out)["settings"]
    said = [line for line in err.splitlines() if line.startswith("localllm: threads:")]
    assert settings["n_threads"] == 2 and settings["threads_at_end"] == 1, said
    assert any("keeping 1 threads" in line for line in said), said


def test_a_load_made_while_others_were_busy_climbs_back_to_the_quiet_count():
    machine = Machine(busy=0.0, step_ms={2: 36.0, 1: 64.0})
    governor = ThreadGovernor(machine.applied.append, 1, True, lambda: machine.busy, lambda: machine.now, max_threads=2)
    machine.run(governor, 5)
    assert governor.current == 2 and machine.applied == [2]
