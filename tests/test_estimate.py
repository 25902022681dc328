"""The estimator against llama.cpp's own no-alloc dry run: KV cache, compute and output buffers."""

from __future__ import annotations

import pytest

from localllm.backends.llamacpp.estimate import MIB, LoadShape, estimate, kv_layer_bytes
from localllm.backends.llamacpp.params import dry_run
from localllm.gguf_info import inspect_file
from localllm.options import LoadOptions



@pytest.mark.slow
@pytest.mark.parametrize("n_ctx, kv, fa", [(2048, "f16", True), (8192, "f16", False), (8192, "q8_0", True), (32768, "f16", True)])
def test_starter_matches_llama_cpp(starter_gguf, spec_cache, n_ctx, kv, fa):
    spec = inspect_file(starter_gguf, spec_cache)
    truth = dry_run(starter_gguf, LoadOptions(n_ctx=n_ctx, kv_type=kv, flash_attn=fa))
    ram = estimate(spec, LoadShape(n_ctx=n_ctx, kv_type=kv, flash_attn=fa)).ram
    assert abs(ram.kv_cache - truth["kv_cache"]) <= 0.01 * MIB, "the KV cache size is exact arithmetic"
    assert abs(ram.output - truth["output"]) <= 0.01 * MIB
    # The compute graph's peak is modelled, not copied: within 3 MiB and never far below.
    assert -1 * MIB <= ram.compute - truth["compute"] <= 4 * MIB, (ram.compute / MIB, truth["compute"] / MIB)


def test_sliding_window_layers_keep_only_the_window(starter_gguf, spec_cache):
    from dataclasses import replace

    spec = inspect_file(starter_gguf, spec_cache)
    swa = replace(spec, sliding_window=512, swa_layers=tuple(i % 6 < 5 for i in range(spec.n_layer)))
    full, windowed = LoadShape(n_ctx=32768, swa_full=True), LoadShape(n_ctx=32768)
    assert kv_layer_bytes(swa, 0, windowed) == kv_layer_bytes(swa, 0, full) * 1024 // 32768
    assert kv_layer_bytes(swa, 5, windowed) == kv_layer_bytes(swa, 5, full), "every 6th layer is global"


def test_gpu_layers_are_the_output_head_then_the_last_blocks(starter_gguf, spec_cache):
    # llama.cpp numbers the head as the layer after the last block and offloads from the end
    # (src/llama-model.cpp: i_gpu_start = n_layer + 1 - n_gpu_layers).
    from dataclasses import replace

    spec = replace(inspect_file(starter_gguf, spec_cache), output_tied=False)
    on_gpu = [estimate(spec, LoadShape(n_ctx=2048, n_gpu_layers=n), ("nvidia",)).gpus[0].weights for n in (1, 2, 31)]
    assert on_gpu == [spec.output_bytes, spec.output_bytes + spec.layer_bytes[-1], spec.output_bytes + sum(spec.layer_bytes)]
    cpu = estimate(spec, LoadShape(n_ctx=2048, n_gpu_layers=1), ("nvidia",)).ram.weights
    assert cpu == spec.weights_bytes - spec.output_bytes
    tied = replace(spec, output_tied=True)
    assert estimate(tied, LoadShape(n_ctx=2048, n_gpu_layers=1), ("nvidia",)).ram.weights == spec.weights_bytes, \
        "a tied head is copied to the GPU; the CPU keeps the embeddings for the input"


def test_amx_packing_bytes_follow_llama_cpps_amx_buffer():
    from localllm.gguf_info import amx_extra_bytes

    # ggml-cpu/amx/mmq.cpp get_row_size: an int32 per Q8_0 block, 4 bytes per Q4_K block.
    assert amx_extra_bytes("blk.3.ffn_up.weight", "Q8_0", (4096, 14336)) == 14336 * (4096 // 32) * 4
    assert amx_extra_bytes("output.weight", "Q4_K", (4096, 151936)) == 151936 * (4096 // 256) * 4
    assert amx_extra_bytes("blk.0.attn_q.weight", "Q4_0", (4096, 4096)) == 0, "Q4_0 packs into the same size"
    assert amx_extra_bytes("blk.0.attn_k.weight", "Q8_0", (576, 200)) == 0, "rows not a multiple of 32: AMX does not take it"
    assert amx_extra_bytes("token_embd.weight", "Q8_0", (4096, 151936)) == 0, "looked up, not multiplied"
    assert amx_extra_bytes("blk.0.ffn_gate_exps.weight", "Q8_0", (4096, 1024, 64)) == 0


@pytest.mark.slow
def test_amx_weights_are_counted_where_they_stay_on_the_cpu(starter_gguf, tmp_path, spec_cache):
    from localllm.backends.llamacpp.params import quantize

    q8 = tmp_path / "starter-q8_0.gguf"
    quantize(starter_gguf, q8, "q8_0")
    spec = inspect_file(q8, spec_cache)
    blocks = 18 * 4  # 576 columns / 32 per block, 4 bytes each
    per_layer = (576 + 192 + 192 + 576 + 1536 + 1536) * blocks + 576 * (1536 // 32) * 4
    assert spec.amx_layer_extra == (per_layer,) * spec.n_layer and spec.amx_output_extra == 0
    plain = estimate(spec, LoadShape(n_ctx=2048)).ram.weights
    assert estimate(spec, LoadShape(n_ctx=2048, amx=True)).ram.weights == plain + per_layer * spec.n_layer
    partial = estimate(spec, LoadShape(n_ctx=2048, amx=True, n_gpu_layers=11), ("nvidia",))
    assert partial.ram.weights - estimate(spec, LoadShape(n_ctx=2048, n_gpu_layers=11), ("nvidia",)).ram.weights == per_layer * 20


@pytest.mark.slow
@pytest.mark.parametrize("n_seq, fa", [(4, True), (8, False)])
def test_several_sequences_share_one_cache_as_llama_cpp_sizes_it(starter_gguf, spec_cache, n_seq, fa):
    spec = inspect_file(starter_gguf, spec_cache)
    truth = dry_run(starter_gguf, LoadOptions(n_ctx=1024, n_seq=n_seq, flash_attn=fa))
    ram = estimate(spec, LoadShape(n_ctx=1024, n_seq=n_seq, flash_attn=fa)).ram
    assert abs(ram.kv_cache - truth["kv_cache"]) <= 0.01 * MIB, (ram.kv_cache / MIB, truth["kv_cache"] / MIB)
    assert abs(ram.output - truth["output"]) <= 0.01 * MIB, (ram.output / MIB, truth["output"] / MIB)
    assert -1 * MIB <= ram.compute - truth["compute"] <= 4 * MIB, (ram.compute / MIB, truth["compute"] / MIB)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["q4_0", "q4_k_m", "q8_0", "iq4_xs"])
def test_the_plan_holds_what_a_load_really_takes_and_weights_are_held_once(starter_gguf, spec_cache, tmp_path, kind):
    """In a fresh process: the planner against the resident growth of a real load (never under,
    within 3% or 64 MiB), and the weights llama.cpp repacks held once, not mapped and copied."""
    from memory_probe import measure

    from localllm.backends.llamacpp.cpu_buffers import REPACK
    from localllm.backends.llamacpp.params import quantize

    path = tmp_path / f"starter-{kind}.gguf"
    quantize(starter_gguf, path, kind)
    plan = estimate(inspect_file(path, spec_cache), LoadShape(n_ctx=4096)).ram.total
    ours = measure(path, 4096)
    assert plan >= ours["growth"] and plan - ours["growth"] <= max(0.03 * ours["growth"], 64 * MIB), \
        (kind, plan / MIB, ours["growth"] / MIB)
    repacked = ours["buffers"].get(REPACK, 0)
    # Held once: the mapped pages of what was repacked given back (Linux), or the file read.
    assert (ours["released"] >= 0.9 * repacked) if ours["mapped"] else repacked > 0, ours
    assert repacked or not ours["released"]
    if repacked:
        mapped = measure(path, 4096, mapped=True)
        assert mapped["growth"] - ours["growth"] >= 0.7 * repacked, (mapped["growth"] / MIB, ours["growth"] / MIB)
