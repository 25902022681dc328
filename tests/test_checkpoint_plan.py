"""Placing safetensors checkpoints across GPUs and RAM (localllm.backends.transformers.checkpoint_plan), against
accelerate's own infer_auto_device_map on the meta device, with GPUs recorded from real NVML
readings (tests/data/profiles.json): no GPU is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from localllm.backends.transformers.checkpoint_plan import (
    kv_bytes_per_layer,
    place,
    read_local,
    spec_from,
)

PROFILES = json.loads((Path(__file__).parent / "data" / "profiles.json").read_text())
GB = 10**9


def free(profile: str, gpu: int = 0) -> int:
    reading = PROFILES[profile]["nvml"]["gpus"][gpu]
    return reading["total"] - reading["used"]


RTX4090, H100, RTX3060 = free("desktop_24gb_gpu"), free("workstation_2x80gb"), free("laptop_16gb_6gb_gpu")
MACHINES = {
    "2x RTX 4090": ([RTX4090, RTX4090], 256 * GB),
    "4x H100": ([H100] * 4, 2000 * GB),
    "RTX 3060 laptop + RAM": ([RTX3060], PROFILES["laptop_16gb_6gb_gpu"]["memory"]["available"] * 20),
    "H100 + RTX 4090": ([H100, RTX4090], 500 * GB),
}
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False)


def meta_model(fields: dict):
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    header = {name: ("BF16", list(p.shape)) for name, p in model.state_dict().items()}
    return model, spec_from("llama", {**config.to_dict(), "torch_dtype": "bfloat16"}, header)


@pytest.mark.parametrize("fields", [LLAMA_70B, LLAMA_8B], ids=["70B", "8B"])
@pytest.mark.parametrize("machine", list(MACHINES))
def test_weights_alone_are_placed_as_accelerate_places_them(fields, machine):
    import torch
    from accelerate import infer_auto_device_map

    model, spec = meta_model(fields)
    gpus, ram = MACHINES[machine]
    max_memory = {i: size for i, size in enumerate(gpus)} | {"cpu": ram}
    theirs = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["LlamaDecoderLayer"],
                                   dtype=torch.bfloat16)
    ours = place(spec, "bfloat16", 4096, [(i, size, "nvidia") for i, size in enumerate(gpus)], ram,
                 with_runtime=False).device_map
    weighted = {m for m in theirs if m != "model.rotary_emb"}  # no weights: ours go with the "" default
    assert {m: ours[m] for m in weighted} == {m: theirs[m] for m in weighted}


def test_the_kv_cache_and_runtime_move_layers_off_the_gpus_and_spill_warns():
    _model, spec = meta_model(LLAMA_70B)
    gpus = [(0, RTX4090, "nvidia"), (1, RTX4090, "nvidia")]
    weights_only = place(spec, "bfloat16", 32768, gpus, 200 * GB, with_runtime=False)
    real = place(spec, "bfloat16", 32768, gpus, 200 * GB)
    on_gpus = lambda p: sum(1 for m, d in p.device_map.items() if d != "cpu" and ".layers." in m)  # noqa: E731
    assert on_gpus(real) < on_gpus(weights_only)
    assert real.fit == "partial" and "run from RAM" in real.warnings[0]
    for device in ("0", "1"):  # every GPU keeps its layers' caches, the runtime and the margin inside its memory
        assert real.used[device] <= real.free[device]
    assert kv_bytes_per_layer(spec, 32768, 2) == 2 * 8 * 128 * 32768 * 2


def test_a_model_beyond_gpus_and_ram_is_refused_with_the_numbers():
    _model, spec = meta_model(LLAMA_70B)
    placed = place(spec, "bfloat16", 4096, [(0, RTX3060, "nvidia")], 16 * GB)
    assert placed.fit == "none" and "of RAM beyond the GPUs" in placed.warnings[0] and "GiB" in placed.warnings[0]


@pytest.mark.slow
def test_all_on_one_big_gpu(starter_checkpoint):
    spec = read_local(starter_checkpoint)
    placed = place(spec, "bfloat16", 4096, [(0, H100, "nvidia")], 60 * GB)
    assert placed.fit == "gpu" and set(placed.device_map.values()) == {0}


@pytest.mark.slow
def test_local_headers_count_what_transformers_loads(starter_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    spec = read_local(starter_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(starter_checkpoint, dtype=torch.bfloat16)
    loaded = sum(p.numel() for p in model.parameters())
    assert spec.elements == loaded and spec.n_layer == 30 and spec.tied
    result = run_cli("plan", str(starter_checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["engine"] == "transformers" and shown["layers"] == {"cpu": 30} and shown["fit"] == "cpu"
