"""Where a safetensors checkpoint goes on this machine's GPUs and RAM, before anything loads.

Read without torch: config.json and the safetensors headers (local files, or by HTTP range on
the Hub) give every tensor's dtype and shape, grouped into the modules accelerate places
(embeddings, each decoder layer, the final norm, the head). Placement fills the GPUs in order,
as accelerate's infer_auto_device_map does, with two differences that are ours to add: each
layer carries its KV cache for the planned context, and each GPU keeps its runtime overhead and
activations free. What does not fit spills to RAM (a warning); past RAM it is refused with the
numbers. The result is the explicit device map handed to from_pretrained.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ... import safejson
from ...errors import ModelLoadError
from ..llamacpp.estimate import GPU_RUNTIME_OVERHEAD, MIB
from ..llamacpp.planner import human_bytes, safety_margin

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}
TORCH_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MAX_HEADER_BYTES = 100 * 2**20
# What PyTorch and the tokenizer hold besides weights, KV cache and activations, measured on the
# starter checkpoint on CPU (tests/benchmarks/bench_full.py): RSS growth minus the rest.
CPU_RUNTIME = 48 * MIB
_LAYER = re.compile(r"^(.*\.layers\.\d+)\.")


@dataclass(frozen=True)
class CheckpointSpec:
    """What placement needs of a checkpoint; sizes are element counts, so any dtype can be priced."""

    name: str
    model_type: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    dtype: str  # the checkpoint's, e.g. "bfloat16"
    modules: tuple[tuple[str, int], ...]  # (module, elements) in execution order
    tied: bool = False  # the head reuses the embeddings' weights

    @property
    def elements(self) -> int:
        return sum(n for _, n in self.modules)


def spec_from(name: str, config: dict, tensors: dict[str, tuple[str, list[int]]]) -> CheckpointSpec:
    """From config.json and {tensor name: (dtype, shape)}."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    try:
        n_layer, n_embd = int(text["num_hidden_layers"]), int(text["hidden_size"])
        n_head = int(text["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(name, "config.json lacks num_hidden_layers, hidden_size or num_attention_heads") from None
    n_head_kv = int(text.get("num_key_value_heads") or n_head)
    head_dim = int(text.get("head_dim") or n_embd // n_head)
    order: dict[str, int] = {}
    for tensor, (_dtype, shape) in tensors.items():
        module = _module_of(tensor)
        count = 1
        for dim in shape:
            count *= int(dim)
        order[module] = order.get(module, 0) + count
    modules = sorted(order.items(), key=lambda item: _rank(item[0]))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return CheckpointSpec(name, str(config.get("model_type", "")), n_layer, n_embd, n_head, n_head_kv, head_dim,
                          int(text.get("intermediate_size") or 4 * n_embd), int(text.get("vocab_size") or 0),
                          int(text.get("max_position_embeddings") or 4096), dtype, tuple(modules),
                          bool(config.get("tie_word_embeddings", False)) and not any(m == "lm_head" for m, _ in modules))


def _module_of(tensor: str) -> str:
    if found := _LAYER.match(tensor):
        return found.group(1)
    return tensor.rsplit(".", 1)[0]


def _rank(module: str) -> tuple:
    """Execution order: embeddings, the layers by number, the rest, the head last."""
    if found := re.search(r"\.layers\.(\d+)$", module):
        return (1, int(found.group(1)))
    if "embed" in module:
        return (0, 0)
    return (3, 0) if module.startswith("lm_head") else (2, 0)


def read_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """One safetensors file's tensors, from its bounded JSON header."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                raise ModelLoadError(path, f"its safetensors header claims {length} bytes")
            header = safejson.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelLoadError(path, f"unreadable safetensors header ({exc})") from None
    return _tensors(header, path)


def _tensors(header: object, where: object) -> dict[str, tuple[str, list[int]]]:
    if not isinstance(header, dict):
        raise ModelLoadError(str(where), "the safetensors header is not an object")
    tensors = {}
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        if not (isinstance(info, dict) and info.get("dtype") in DTYPE_BYTES and isinstance(info.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in info["shape"])):
            raise ModelLoadError(str(where), f"the safetensors header describes {str(tensor)[:80]!r} wrongly")
        tensors[tensor] = (info["dtype"], info["shape"])
    return tensors


MAX_CONFIG_BYTES = 1 << 20


def read_config(path: Path) -> dict:
    """config.json, bounded and checked: it names the architecture transformers will build."""
    file = path / "config.json"
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read config.json: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(path, "config.json is larger than 1 MiB")
    try:
        config = safejson.loads(raw)
    except ValueError:
        raise ModelLoadError(path, "config.json is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(path, "config.json has no model_type")
    return config


def read_local(folder: Path) -> CheckpointSpec:
    config = read_config(folder)
    tensors: dict[str, tuple[str, list[int]]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(read_header(file))
    return spec_from(folder.name, config, tensors)


def read_remote(repo_id: str, revision: str = "main") -> CheckpointSpec:
    """From the Hub without downloading weights: config.json, and each shard's header by HTTP range."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    from ...hub import hub_errors

    with hub_errors(repo_id):
        config = json.loads(Path(hf_hub_download(repo_id, "config.json", revision=revision)).read_text())
        meta = get_safetensors_metadata(repo_id, revision=revision)
    tensors = {}
    for file in meta.files_metadata.values():
        tensors.update({name: (info.dtype, list(info.shape)) for name, info in file.tensors.items()})
    return spec_from(repo_id, config, tensors)


@dataclass(frozen=True)
class Placement:
    fit: str  # "gpu", "partial" (some layers in RAM), "cpu" or "none"
    device_map: dict[str, str | int]
    used: dict[str, int]  # bytes per device ("0", "1", ..., "cpu"): weights, KV cache, overhead
    free: dict[str, int]
    warnings: tuple[str, ...] = field(default=())


def kv_bytes_per_layer(spec: CheckpointSpec, n_ctx: int, dtype_bytes: int) -> int:
    return 2 * spec.n_head_kv * spec.head_dim * n_ctx * dtype_bytes


def activation_bytes(spec: CheckpointSpec, n_ctx: int, dtype_bytes: int) -> int:
    """The largest forward pass: a whole prompt of n_ctx tokens through one layer, and one row of logits."""
    return n_ctx * (4 * spec.n_embd + 2 * spec.n_ff) * dtype_bytes + spec.n_vocab * 4


def place(spec: CheckpointSpec, dtype: str, n_ctx: int, gpus: list[tuple[int, int, str]], ram_free: int,
          margin: int | None = None, with_runtime: bool = True) -> Placement:
    """gpus: (index, free bytes, vendor) of each GPU to use. with_runtime=False counts weights
    alone (what accelerate counts), for comparing with it."""
    size = TORCH_DTYPE_BYTES[dtype]
    kv = kv_bytes_per_layer(spec, n_ctx, size) if with_runtime else 0
    activations = activation_bytes(spec, n_ctx, size) if with_runtime else 0
    devices: list[str | int] = [index for index, _, _ in gpus] + ["cpu"]
    budget = {}
    for index, free, vendor in gpus:
        keep = (margin if margin is not None else safety_margin(free)) if with_runtime else 0
        overhead = GPU_RUNTIME_OVERHEAD.get(vendor, 450 * MIB) if with_runtime else 0
        budget[index] = free - keep - overhead - activations
    budget["cpu"] = ram_free - ((margin if margin is not None else safety_margin(ram_free)) if with_runtime else 0)
    costs = [(module, elements * size + (kv if _LAYER.match(module + ".") else 0)) for module, elements in spec.modules]
    largest = max((cost for _, cost in costs), default=0)
    # As accelerate: the first GPU and the CPU keep room for the largest module.
    main = {devices[0], "cpu"}
    used = {device: 0 for device in devices}
    device_map: dict[str, str | int] = {}
    current = 0
    for module, cost in costs:
        while True:
            device = devices[current]
            room = budget[device] - (largest if device in main else 0)
            if used[device] + cost <= room or device == "cpu":
                break
            current += 1
        device_map[module] = device
        used[device] += cost
    if gpus:
        device_map[""] = devices[0]  # modules without weights (rotary tables) go with the first
    else:
        used["cpu"] += activations + (CPU_RUNTIME if with_runtime else 0)
    on_cpu = [m for m, d in device_map.items() if d == "cpu" and m]
    warnings = []
    fit = "gpu" if gpus and not on_cpu else ("cpu" if not gpus or len(on_cpu) == len(costs) else "partial")
    if used["cpu"] > budget["cpu"]:
        fit = "none"
        warnings.append(f"needs {human_bytes(used['cpu'])} of RAM beyond the GPUs but {human_bytes(budget['cpu'])} is "
                        "available; use a smaller model or a GGUF quantization")
    elif fit == "partial":
        warnings.append(f"{len(on_cpu)} of {len(costs)} modules do not fit on the GPUs and run from RAM, much slower")
    return Placement(fit, device_map, {str(k): v for k, v in used.items()},
                     {str(k): v for k, v in budget.items()}, tuple(warnings))
