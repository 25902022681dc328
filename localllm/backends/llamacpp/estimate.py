"""How much memory a model needs for a given load, per device, before anything is loaded.

Every term follows how llama.cpp sizes its buffers; each was checked against a no_alloc dry
run of llama.cpp (its logged KV and compute buffer sizes) and against measured resident memory
(tests/benchmarks/bench_memory.py prints the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...gguf_info import ModelSpec

MIB = 2**20
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KV_CELL_PAD = 256  # llama.cpp rounds the KV cache and the context up to this many cells
# Allocations that are not buffers: vocabulary tables, graph metadata, the sampler. They grow
# with the vocabulary, and a BPE vocabulary's merges cost as much again: measured 22 MiB for
# SmolLM2 (49k tokens), 55 and 60 MiB for Qwen2.5-Coder 0.5B and 1.5B (152k tokens, 151k merges),
# about 60 MiB for Gemma 3 (262k tokens, no merges). Fitted to stay above every one.
RUNTIME_BASE = 24 * MIB
RUNTIME_PER_VOCAB_TOKEN = 280
# An RPC worker's own runtime is already spent when it reports its free memory.
GPU_RUNTIME_OVERHEAD = {"nvidia": 450 * MIB, "apple": 512 * MIB, "amd": 450 * MIB, "rpc": 0}


@dataclass(frozen=True)
class LoadShape:
    """The settings a memory estimate depends on."""

    n_ctx: int
    kv_type: str = "f16"
    flash_attn: bool = True
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] = ()  # share of offloaded layers per GPU; empty: all on GPU 0
    n_ubatch: int = 512
    swa_full: bool = False
    amx: bool = False  # llama.cpp's AMX kernels hold the CPU's weights, some types in more bytes
    n_seq: int = 1  # sequences sharing one unified KV cache of n_ctx cells each (serve --parallel)
    outputs: int = 1  # rows of logits one decode returns: a sequence's last token, or speculation's drafts too

    @property
    def cells(self) -> int:
        return pad(self.n_ctx * self.n_seq)


@dataclass(frozen=True)
class DeviceEstimate:
    """Bytes one device needs, by what they are for."""

    device: str  # "cpu", or "gpu0", "gpu1", ... ("rpc0", ... for RPC workers' devices)
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    scratch: int = 0
    output: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.scratch + self.output + self.overhead


@dataclass(frozen=True)
class MemoryEstimate:
    devices: tuple[DeviceEstimate, ...]

    @property
    def ram(self) -> DeviceEstimate:
        return self.devices[0]

    @property
    def gpus(self) -> tuple[DeviceEstimate, ...]:
        return self.devices[1:]


def pad(n: int, to: int = KV_CELL_PAD) -> int:
    return -(-n // to) * to


def kv_cells(spec: ModelSpec, layer: int, shape: LoadShape) -> int:
    """Cells layer `layer` keeps: the whole context, or for sliding-window layers only the window."""
    n_ctx = shape.cells
    if spec.swa_layers and spec.swa_layers[layer] and not shape.swa_full and spec.sliding_window:
        return min(n_ctx, pad(spec.sliding_window * shape.n_seq + shape.n_ubatch))
    return n_ctx


def kv_layer_bytes(spec: ModelSpec, layer: int, shape: LoadShape) -> int:
    elements = spec.n_head_kv[layer] * (spec.head_dim_k + spec.head_dim_v)
    return int(kv_cells(spec, layer, shape) * elements * KV_BYTES_PER_ELEMENT[shape.kv_type])


def saved_state_bytes(spec: ModelSpec, shape: LoadShape, tokens: int) -> int:
    """A prompt state of `tokens` tokens on disk (localllm.backends.llamacpp.state_cache): every
    layer's K and V rows of its cells (a sliding-window layer keeps only its window)."""
    total = 0
    for layer in range(spec.n_layer):
        elements = spec.n_head_kv[layer] * (spec.head_dim_k + spec.head_dim_v)
        total += min(tokens, kv_cells(spec, layer, shape)) * elements * KV_BYTES_PER_ELEMENT[shape.kv_type]
    return int(total)


def compute_bytes(spec: ModelSpec, shape: LoadShape) -> int:
    """The largest graph llama.cpp reserves for one ubatch: the feed-forward block (gate, up and
    their product side by side, f32, besides a few embedding-wide tensors), or, without flash
    attention, the attention scores (f32, heads x ubatch x cells) if they are larger.

    Fitted to llama.cpp's dry runs of SmolLM2-135M and Qwen2.5-Coder 0.5B and 1.5B (n_ff 1536 to
    8960): within 2.5 MiB, never below. With flash attention only the f16 masks (ubatch x cells,
    one per attention kind) grow with the context.
    """
    n_ctx = shape.cells
    feed_forward = shape.n_ubatch * 4 * (3 * spec.n_ff + 4 * spec.n_embd)
    has_swa = any(spec.swa_layers)
    swa_cells = min(n_ctx, pad((spec.sliding_window or 0) * shape.n_seq + shape.n_ubatch)) if has_swa else 0
    if shape.flash_attn:
        if has_swa and not shape.swa_full:
            masks = shape.n_ubatch * 2 * (n_ctx + swa_cells)
        else:
            masks = shape.n_ubatch * 2 * n_ctx * (2 if has_swa else 1)
        return feed_forward + masks
    scores_cells = n_ctx if not has_swa or shape.swa_full else max(n_ctx, swa_cells)
    n_masks = 2 if has_swa and shape.swa_full else 1
    attention = shape.n_ubatch * 4 * (scores_cells * (spec.n_head + n_masks) + 6 * spec.n_embd)
    return max(feed_forward, attention)


def cpu_scratch_bytes(spec: ModelSpec, shape: LoadShape) -> int:
    """The CPU backend's work buffer, outside llama.cpp's compute buffer: without flash attention
    it converts the attention weights (heads x ubatch x cells) to f16 for the product with V.
    Measured: 59 MiB more than the buffers at 8k context for SmolLM2, matching this term."""
    if shape.flash_attn:
        return 0
    return shape.n_ubatch * shape.cells * spec.n_head * 2


def estimate(spec: ModelSpec, shape: LoadShape, gpu_vendors: tuple[str, ...] = ()) -> MemoryEstimate:
    """RAM and per-GPU memory for this model loaded this way.

    The output head and the last n_gpu_layers - 1 repeating blocks go to the GPUs (split by
    tensor_split), as llama.cpp offloads them. Each device that runs layers holds their KV cache
    and a compute buffer. With AMX in use, the CPU's weights take the AMX buffer's sizes.
    """
    n_gpus = len(gpu_vendors)
    n_gpu_layers = min(max(shape.n_gpu_layers, 0), spec.n_layer + 1) if n_gpus else 0
    # llama.cpp counts the output head as the layer after the last block and offloads from the
    # end: n GPU layers are the head and the last n - 1 blocks (src/llama-model.cpp, i_gpu_start).
    first_gpu_layer = spec.n_layer + 1 - n_gpu_layers if n_gpu_layers else spec.n_layer
    split = _normalized(shape.tensor_split, n_gpus)
    layer_device = [0] * spec.n_layer
    offloaded = list(range(first_gpu_layer, spec.n_layer))
    for position, layer in enumerate(offloaded):
        layer_device[layer] = 1 + _device_for(position, n_gpu_layers, split)

    weights = [0] * (n_gpus + 1)
    kv = [0] * (n_gpus + 1)
    for layer in range(spec.n_layer):
        device = layer_device[layer]
        weights[device] += spec.layer_bytes[layer] if layer < len(spec.layer_bytes) else 0
        if shape.amx and device == 0 and layer < len(spec.amx_layer_extra):
            weights[0] += spec.amx_layer_extra[layer]
        kv[device] += kv_layer_bytes(spec, layer, shape)
    output_on_gpu = n_gpu_layers > 0
    head_device = 1 + _device_for(n_gpu_layers - 1, n_gpu_layers, split) if output_on_gpu else 0
    # A tied head is a copy of the embeddings, which the CPU keeps for the input lookup.
    weights[0] += spec.other_bytes - (spec.output_bytes if output_on_gpu and not spec.output_tied else 0)
    weights[0] += spec.amx_output_extra if shape.amx and not output_on_gpu else 0
    weights[head_device] += spec.output_bytes if output_on_gpu else 0

    compute = compute_bytes(spec, shape)
    logits = spec.n_vocab * 4 * max(shape.n_seq, shape.outputs)  # the rows of logits llama.cpp keeps room for
    devices = [DeviceEstimate(
        "cpu", weights[0], kv[0], compute, cpu_scratch_bytes(spec, shape), logits,
        RUNTIME_BASE + RUNTIME_PER_VOCAB_TOKEN * spec.n_vocab,
    )]
    n_remote = gpu_vendors.count("rpc")  # llama.cpp puts RPC workers' devices first
    for i, vendor in enumerate(gpu_vendors, start=1):
        uses = weights[i] or kv[i]
        devices.append(DeviceEstimate(
            f"rpc{i - 1}" if vendor == "rpc" else f"gpu{i - 1 - n_remote}", weights[i], kv[i], compute if uses else 0, 0, 0,
            GPU_RUNTIME_OVERHEAD.get(vendor, 450 * MIB) if uses else 0,
        ))
    return MemoryEstimate(tuple(devices))


def _normalized(split: tuple[float, ...], n_gpus: int) -> tuple[float, ...]:
    if not n_gpus:
        return ()
    if not split or len(split) != n_gpus or sum(split) <= 0:
        return (1.0,) + (0.0,) * (n_gpus - 1)
    total = sum(split)
    return tuple(s / total for s in split)


def _device_for(position: int, count: int, split: tuple[float, ...]) -> int:
    """Which GPU gets the position-th offloaded layer, as llama.cpp's layer split assigns them."""
    edge = 0.0
    for device, share in enumerate(split):
        edge += share
        if position < round(edge * count):
            return device
    return len(split) - 1
