"""`localllm hw`, `localllm plan`, and loading through the plan with the out-of-memory ladder."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, run_cli

from localllm.backends.llamacpp.load import out_of_memory, smaller
from localllm.options import LoadOptions


def test_hw_reports_this_machine():
    result = invoke("hw", "--json")
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert data["cpu"]["logical_cores"] >= 1
    assert data["memory"]["total"] >= data["memory"]["available"] > 0
    assert data["build"]["devices"][-1]["kind"] == "cpu"
    text = invoke("hw").stdout
    assert text.startswith("CPU ") and "RAM " in text and "llama.cpp  GPU offload" in text


def test_plan_explains_and_breaks_down(starter_gguf):
    result = invoke("plan", "starter")
    assert result.returncode == 0, result
    assert result.stdout.startswith("SmolLM2-135M-Instruct.Q4_1.gguf: CPU only")
    for row in ("weights", "KV cache", "compute buffer", "safety margin", "total", "free now"):
        assert row in result.stdout
    data = json.loads(invoke("plan", "starter", "--ctx", "8192", "--json").stdout)
    assert data["fit"] == "cpu" and data["settings"]["n_ctx"] == 8192
    ram = data["estimate"][0]
    assert ram["kv_cache"] == 8192 * 30 * 3 * 128 * 2, "f16 K and V: layers x KV heads x (64 + 64) x 2 bytes per cell"
    assert ram["weights"] == starter_gguf.stat().st_size - 1785664, "every tensor byte; the header is not loaded"


def test_plan_plans_a_draft_model_beside_its_model():
    alone = json.loads(invoke("plan", "starter", "--json").stdout)
    data = json.loads(invoke("plan", "starter", "--ctx", "2048", "--draft", "starter", "--json").stdout)
    assert data["draft"]["settings"]["n_ctx"] == 2048, "the draft model reads the same tokens: the model's window"
    assert data["draft"]["settings"]["outputs"] == 1 and data["settings"]["outputs"] > 1, \
        "the model returns a row of logits per drafted token, the draft model one"
    assert alone["estimate"][0]["output"] == data["estimate"][0]["output"] > data["draft"]["estimate"][0]["output"]
    text = invoke("plan", "starter", "--draft", "starter").stdout
    assert "draft model SmolLM2-135M-Instruct.Q4_1.gguf: CPU only beside it" in text


def test_plan_of_a_missing_model_is_a_clean_error():
    result = invoke("plan", "no-such-model")
    assert result.returncode == 3 and "Traceback" not in result.stderr


def test_plan_plans_a_catalog_model_before_it_is_downloaded():
    # Was: exit 3 "not installed", while `show` planned the same model.
    result = invoke("plan", "qwen3:8b")
    assert result.returncode == 0, result
    assert result.stdout.startswith("qwen3:8b-") and "weights" in result.stdout
    named = json.loads(invoke("plan", "qwen3:8b-q4_k_m", "--ctx", "8192", "--json").stdout)
    assert named["model"] == "qwen3:8b-q4_k_m" and named["settings"]["n_ctx"] == 8192
    assert named["estimate"][0]["weights"] > 4 * 2**30


def test_plan_and_show_count_a_catalog_vision_models_projector():
    """Before any download, a vision model's projector (the catalog's projector_gb) is planned beside it."""
    from localllm.catalog import load_catalog

    projector = load_catalog().find("gemma3", "4b").projector_bytes
    seeing = json.loads(invoke("plan", "gemma3:4b-q4_k_m", "--json").stdout)
    blind = json.loads(invoke("plan", "gemma3:1b-q4_k_m", "--json").stdout)  # the same machine, a text model
    assert seeing["projector_bytes"] == projector and blind["projector_bytes"] == 0
    assert blind["free"][0] - seeing["free"][0] == pytest.approx(projector, abs=256 * 2**20)  # free RAM moves a little
    assert "its projector takes about 1.1 GiB beside it" in invoke("plan", "gemma3:4b").stdout
    shown = json.loads(invoke("show", "gemma3:4b", "--json").stdout)
    assert shown["sees_images"] and shown["projector_bytes"] == projector
    assert "sees images; its projector (mmproj) comes with it" in invoke("show", "gemma3:4b").stdout


def test_run_refuses_what_cannot_fit():
    refused = invoke("run", "-m", "starter", "--margin", "100000000", "-t", "0", "--max-tokens", "3", "hi")
    assert refused.returncode == 4
    assert "does not fit" in refused.stderr and "--load-anyway" in refused.stderr


@pytest.mark.slow
def test_run_loads_what_cannot_fit_when_asked():
    forced = run_cli("run", "-m", "starter", "--margin", "100000000", "--load-anyway", "-t", "0", "--max-tokens", "3", "hi")
    assert forced.returncode == 0, forced
    assert "loading anyway" in forced.stderr


@pytest.mark.slow
def test_user_choices_reach_llama_cpp():
    data = json.loads(run_cli("run", "-m", "starter", "--json", "--kv-type", "q8_0", "--ctx", "1024", "--threads", "1",
                              "-t", "0", "--max-tokens", "3", "hi").stdout)
    assert (data["settings"]["kv_type"], data["settings"]["n_ctx"], data["settings"]["n_threads"]) == ("q8_0", 1024, 1)


def test_out_of_memory_ladder_changes_only_what_the_user_left_open():
    asked = LoadOptions()
    current = LoadOptions(n_gpu_layers=33, n_ctx=4096)
    steps = []
    while (step := smaller(current, asked)) is not None:
        current, change = step
        steps.append(change)
    assert steps[:3] == ["25 GPU layers", "19 GPU layers", "15 GPU layers"]
    assert "a q8_0 KV cache" in steps and steps[-1] == "a 512-token context"
    assert current.n_gpu_layers == 0 and current.kv_type == "q8_0" and current.n_ctx == 512
    fixed = LoadOptions(n_ctx=4096, kv_type="f16", n_gpu_layers=10)
    assert smaller(fixed, fixed) is None, "nothing the user fixed is changed"


def test_llama_cpp_allocation_failures_count_as_out_of_memory():
    # Messages llama.cpp printed here under `ulimit -v`, and CUDA's.
    assert out_of_memory("ggml_aligned_malloc: insufficient memory (attempted to allocate  17.51 MB)")
    assert out_of_memory("failed to allocate CUDA0 buffer of size 4294967296")
    assert not out_of_memory("tensor 'blk.11.ffn_up.weight' data is not within the file bounds")
