"""The estimator against llama.cpp's own no-alloc dry run: KV cache, compute and output buffers."""

from __future__ import annotations

import pytest

from localllm.backends.llamacpp import dry_run
from localllm.estimate import MIB, LoadShape, estimate, kv_layer_bytes
from localllm.gguf_info import inspect_file
from localllm.options import LoadOptions

pytestmark = pytest.mark.slow


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
