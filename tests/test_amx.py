"""AMX on Intel Xeons (issue 17): the verdict (setting, cached probe), the load without AMX that
keeps the repack kernels, the one-line message when llama.cpp dies by a signal, and `hw`.

The decision logic is driven by real child processes that stand in for the probe (one dies by
SIGILL, one succeeds); the placement and the crash message by the real llama.cpp and the
installed command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TEST_LOAD, assert_one_line_error, run_cli

from localllm.backends.llamacpp import amx
from localllm.backends.llamacpp.cpu_buffers import cpu_layers, override_patterns
from localllm.cli.machine import _hw_text
from localllm.config import save_config
from localllm.errors import LocalLLMError, UsageError
from localllm.events import Token
from localllm.hardware import (
    AmxStatus,
    BuildInfo,
    CpuInfo,
    HardwareProfile,
    MemoryInfo,
    cpu_flags,
    read_cpuinfo,
)
from localllm.options import SamplingOptions

DIES_BY_SIGILL = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
SUCCEEDS = [sys.executable, "-c", "print('ok')"]
HAS_AMX = {"amx_tile", "amx_int8"} <= cpu_flags(read_cpuinfo())


class Probe:
    """A probe that runs a real child process and counts how often it was asked."""

    def __init__(self, command: list[str]):
        self.command, self.calls = command, 0

    def __call__(self) -> amx.ProbeResult:
        self.calls += 1
        return amx.run_probe(self.command, timeout=30)


def decide(probe, key="build-a", cache=None, mode="auto", in_build=True, tmp=None):
    return amx.decide(True, in_build, mode, "test", key, cache or tmp / "verdicts.json", probe)


@pytest.mark.slow
def test_a_probe_killed_by_sigill_disables_amx_and_the_verdict_is_cached(tmp_path):
    crashing = Probe(DIES_BY_SIGILL)
    first = decide(crashing, tmp=tmp_path)
    assert not first.in_use and "crashes with this llama.cpp build" in first.detail and "SIGILL" in first.detail
    assert first.describe().startswith("present, disabled (crashes with this llama.cpp build")
    unused = Probe(SUCCEEDS)
    again = decide(unused, tmp=tmp_path)
    assert unused.calls == 0 and again == first, "the cached verdict is used, no second probe"


@pytest.mark.slow
def test_a_probe_that_decodes_enables_amx(tmp_path):
    working = Probe(SUCCEEDS)
    status = decide(working, tmp=tmp_path)
    assert status.in_use and working.calls == 1
    assert status.describe() == "present, in use (checked with this llama.cpp build)"


@pytest.mark.slow
def test_a_new_build_is_probed_again(tmp_path):
    decide(Probe(SUCCEEDS), key="build-a", tmp=tmp_path)
    crashing = Probe(DIES_BY_SIGILL)
    assert not decide(crashing, key="build-b", tmp=tmp_path).in_use and crashing.calls == 1
    assert decide(Probe(DIES_BY_SIGILL), key="build-a", tmp=tmp_path).in_use, "each build keeps its own verdict"


def test_the_build_key_changes_with_the_llama_cpp_libraries(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libggml-cpu.so").write_bytes(b"one build")
    cpuinfo = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx512f amx_tile amx_int8\n"
    key = amx.build_key(lib, "0.3.36", cpuinfo)
    assert key == amx.build_key(lib, "0.3.36", cpuinfo)
    (lib / "libggml-cpu.so").write_bytes(b"another build")
    assert amx.build_key(lib, "0.3.36", cpuinfo) != key
    assert amx.build_key(lib, "0.3.37", cpuinfo) != amx.build_key(lib, "0.3.36", cpuinfo)
    assert amx.build_key(lib, "0.3.36", cpuinfo.replace("8480+", "8580")) != amx.build_key(lib, "0.3.36", cpuinfo)


@pytest.mark.slow
def test_an_inconclusive_probe_disables_amx_for_now_and_is_not_cached(tmp_path):
    failing = Probe([sys.executable, "-c", "print('cannot load'); raise SystemExit(3)"])
    status = decide(failing, tmp=tmp_path)
    assert not status.in_use and "cannot load" in status.detail
    assert not (tmp_path / "verdicts.json").exists()
    assert decide(Probe(SUCCEEDS), tmp=tmp_path).in_use, "the next process probes again"
    slow = amx.run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert slow.usable is None and "timed out" in slow.detail


@pytest.mark.slow
def test_a_malformed_cache_is_probed_again_and_rewritten(tmp_path):
    cache = tmp_path / "verdicts.json"
    cache.write_text('{"build-a": {"usable": "yes"}, "x": [1]')
    working = Probe(SUCCEEDS)
    assert decide(working, cache=cache).in_use and working.calls == 1
    assert json.loads(cache.read_text())["build-a"]["usable"] is True


def test_settings_override_the_probe(tmp_path, monkeypatch):
    never = Probe(DIES_BY_SIGILL)
    monkeypatch.setenv(amx.ENV, "off")
    mode, origin = amx.configured_mode()
    assert (mode, origin) == ("off", "LOCALLLM_AMX")
    assert not decide(never, mode=mode, tmp=tmp_path).in_use
    assert decide(never, mode="on", tmp=tmp_path).in_use and never.calls == 0, "on: no probe, the user knows better"
    assert not decide(never, in_build=False, tmp=tmp_path).in_use and never.calls == 0, "no AMX kernels: nothing to probe"

    monkeypatch.delenv(amx.ENV)
    assert amx.configured_mode() == ("auto", "default")
    save_config({"amx": "On"})
    assert amx.configured_mode()[0] == "on"
    monkeypatch.setenv(amx.ENV, "off")
    assert amx.configured_mode()[0] == "off", "the environment wins over the settings file"
    monkeypatch.setenv(amx.ENV, "sometimes")
    with pytest.raises(UsageError, match="LOCALLLM_AMX must be one of auto, on, off"):
        amx.configured_mode()
    monkeypatch.delenv(amx.ENV)
    save_config({"amx": "sometimes"})
    with pytest.raises(UsageError, match='"amx" in .*config.json must be one of'):
        amx.configured_mode()
    save_config({"amx": 1})
    with pytest.raises(LocalLLMError, match='"amx" must be text'):
        amx.configured_mode()


@pytest.mark.slow
def test_the_probe_model_loads_and_decodes_in_the_probe_child(tmp_path):
    model = amx.write_probe_model(tmp_path / "probe.gguf")
    result = amx.run_probe([sys.executable, str(Path(amx.__file__).with_name("amx_probe.py")), str(model)])
    # On an AMX machine whose build crashes the child dies by a signal: that is the verdict.
    # Never "cannot load": the generated model itself must be valid for llama.cpp.
    assert result.usable is True or (HAS_AMX and result.usable is False), result


def _profile(status: AmxStatus | None) -> HardwareProfile:
    cpu = CpuInfo("Intel(R) Xeon(R) Platinum 8480+", 2, 4, features=("avx512f", "amx_tile", "amx_int8"))
    return HardwareProfile("Linux", cpu, MemoryInfo(24 * 2**30, 20 * 2**30), build=BuildInfo(False, (), status))


def test_hw_says_whether_amx_is_used():
    crashed = AmxStatus(True, True, "auto", False, "crashes with this llama.cpp build: the check died with SIGILL")
    assert "AMX     present, disabled (crashes with this llama.cpp build" in _hw_text(_profile(crashed))
    used = replace(crashed, in_use=True, detail="checked with this llama.cpp build")
    assert "AMX     present, in use (checked with this llama.cpp build)" in _hw_text(_profile(used))
    absent = AmxStatus(False, False, "auto", False, "this llama.cpp build has no AMX kernels")
    assert "AMX" not in _hw_text(_profile(absent))


@pytest.mark.slow
def test_hw_json_carries_the_amx_verdict_and_refuses_a_bad_setting():
    data = json.loads(run_cli("hw", "--json", env={amx.ENV: "off"}).stdout)["build"]["amx"]
    assert data["mode"] == "off" and data["in_use"] is False and data["present"] is HAS_AMX
    assert_one_line_error(run_cli("hw", env={amx.ENV: "maybe"}), 2, "LOCALLLM_AMX must be one of auto, on, off")


def test_override_patterns_name_only_the_cpu_resident_weights():
    weights = {"blk.0.attn_q.weight": 0, "blk.1.attn_q.weight": 1, "blk.2.attn_q.weight": 2,
               "blk.1.ffn_down.weight": 1, "output.weight": None}
    assert cpu_layers(3, 0, gpu_offload=True) == (3, True)
    assert cpu_layers(3, 99, gpu_offload=False) == (3, True), "a CPU-only build keeps every layer on the CPU"
    assert cpu_layers(3, 1, gpu_offload=True) == (3, False), "the first GPU layer is the output head"
    assert cpu_layers(3, 2, gpu_offload=True) == (2, False)
    assert cpu_layers(3, -1, gpu_offload=True) == (0, False)
    assert override_patterns(weights, 3, True) == [
        r"^output\.weight$", r"^blk\.(?:0|1|2)\.attn_q\.weight$", r"^blk\.(?:1)\.ffn_down\.weight$"]
    assert override_patterns(weights, 2, False) == [r"^blk\.(?:0|1)\.attn_q\.weight$", r"^blk\.(?:1)\.ffn_down\.weight$"]
    assert override_patterns(weights, 0, False) == []


@pytest.fixture(scope="module")
def starter_q4_0(starter_gguf, tmp_path_factory) -> Path:
    from localllm.backends.llamacpp.params import quantize

    path = tmp_path_factory.mktemp("q4_0") / "starter-q4_0.gguf"
    quantize(starter_gguf, path, "q4_0")
    return path


def _load_and_answer(path: Path, monkeypatch, mode: str):
    from localllm.backends.llamacpp.model import LlamaCppModel

    monkeypatch.setenv(amx.ENV, mode)
    monkeypatch.setattr(amx, "_status", None)
    model = LlamaCppModel(path, replace(TEST_LOAD, n_ctx=512, n_gpu_layers=0))
    try:
        events = model.generate("The capital of France is", SamplingOptions(temperature=0, max_tokens=16))
        return model.weight_buffers, [e.text for e in events if isinstance(e, Token)]
    finally:
        model.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["starter_gguf", "starter_q4_0"])
def test_loading_without_amx_keeps_the_repack_kernels(model, request, monkeypatch):
    path = request.getfixturevalue(model)
    # auto, not on: forcing AMX on a machine whose build crashes would take pytest down with it.
    default_buffers, default_answer = _load_and_answer(path, monkeypatch, "auto")
    buffers, answer = _load_and_answer(path, monkeypatch, "off")
    assert "AMX" not in buffers
    if not HAS_AMX:
        # Without AMX, llama.cpp's default placement is CPU_REPACK where it can: the fallback
        # must reproduce it to the byte, and so the same answer.
        assert buffers == default_buffers and answer == default_answer
    if model == "starter_q4_0" and "avx2" in cpu_flags(read_cpuinfo()):
        assert buffers["CPU_REPACK"] > 50 * 2**20, "the Q4_0 matmul weights are repacked"
    if model == "starter_gguf":
        assert "CPU_REPACK" not in buffers, "Q4_1 has no repack kernel: nothing may be sent there"


@pytest.mark.slow
def test_a_default_run_decodes_in_a_child_process():
    # The regression on AMX machines: this died with SIGILL (returncode -4 / 132) before the fix.
    result = run_cli("run", "-t", "0", "--max-tokens", "8", "Hello")
    assert result.returncode == 0 and result.stdout.strip(), result


CRASH = textwrap.dedent("""
    import ctypes, sys, threading
    from localllm import crash
    crash.install()
    crash.note_amx(present=sys.argv[1] != "none", in_use=sys.argv[1] == "in-use")
    # A fault in a thread that released the GIL, as a llama.cpp kernel faults.
    fault = (lambda: ctypes.memset(0, 0, 8)) if sys.argv[2] == "segv" else (lambda: getattr(ctypes.CDLL(None), "raise")(4))
    worker = threading.Thread(target=fault)
    worker.start()
    worker.join()
    print("survived")
""")


def _crash(amx_state: str, kind: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CRASH, amx_state, kind], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_fatal_signal_is_one_line_naming_the_cause_and_the_setting():
    from localllm.errors import EXIT_CRASH

    with_amx = _crash("in-use", "ill")
    assert with_amx.returncode == EXIT_CRASH and with_amx.stdout == ""
    line, = with_amx.stderr.strip().splitlines()
    assert line.startswith("localllm: error: llama.cpp crashed with an illegal instruction (SIGILL)")
    assert "LOCALLLM_AMX=off" in line
    segv = _crash("none", "segv")
    assert segv.returncode == EXIT_CRASH and "memory fault (SIGSEGV)" in segv.stderr and "AMX" not in segv.stderr
    elsewhere = _crash("none", "ill")
    assert "compiled for another CPU" in elsewhere.stderr and len(elsewhere.stderr.strip().splitlines()) == 1
    assert "also try LOCALLLM_AMX=off" in _crash("present", "segv").stderr


@pytest.mark.slow
def test_an_abort_inside_llama_cpp_is_one_line_with_its_reason_and_no_backtrace():
    # A real GGML_ABORT: a tensor larger than its ggml context's memory pool.
    script = textwrap.dedent("""
        from localllm import crash
        from localllm.backends.llamacpp import runtime as llamacpp_runtime
        from localllm.backends.llamacpp.cpu_buffers import _api, _InitParams
        crash.install()
        llamacpp_runtime.init_backend(False)
        g = _api()
        ctx = g.init(_InitParams(1024, None, False))
        g.new_tensor_2d(ctx, 0, 4096, 4096)
        print("survived")
    """)
    from localllm.errors import EXIT_CRASH

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CRASH and "survived" not in result.stdout, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("localllm: error: llama.cpp aborted: ggml.c:") and "GGML_ASSERT" in lines[-1], result.stderr
    assert "gdb" not in result.stderr and "backtrace" not in result.stderr.lower()
