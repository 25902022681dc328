"""What a GGUF model is, from its metadata: the shapes the memory estimate needs.

Read with the `gguf` package from a local file, from the header of a remote file (an HTTP range
request written into a sparse file, since GGUFReader memory-maps the whole file), or from the
metadata llama.cpp exposes once a model is loaded. GGUFReader parses every vocabulary string,
which takes seconds, so results are cached by file identity.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import safejson
from .errors import ModelLoadError
from .gguf_header import HeaderError, Truncated, check_layers, scan, scan_file
from .gguf_names import split_files

# Architectures whose sliding-window layout llama.cpp hard-codes instead of reading it from
# the file: every Nth layer attends globally (llama.cpp src/llama-model.cpp).
SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gemma3n": 5}
# The weights llama.cpp multiplies with (GGML_OP_MUL_MAT) in a dense block, and the output head;
# group 1 is the block number. Embeddings are looked up (GET_ROWS), not multiplied.
MATMUL_WEIGHT = re.compile(
    r"^(?:blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_qkv|attn_output|ffn_gate|ffn_up|ffn_down)|output)\.weight$"
)
# Architectures that embed text but cannot generate it; such a model is never the default.
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert",
                                   "modern-bert", "t5encoder", "xlm-roberta", "eurobert"})
# Bump when ModelSpec gains a field read from the file, so cached specs are read again.
SPEC_VERSION = 2
# llama.cpp's AMX kernels store some types with more bytes per block than the file does (an int32
# compensation per Q8_0 block, 4 scale bytes per Q4_K/Q5_K block, 2 per IQ4_XS block:
# ggml-cpu/amx/mmq.cpp get_row_size); the alignment of each row they require; 0 for no change.
AMX_TYPES = {"Q4_0": (32, 0), "Q4_1": (32, 0), "Q8_0": (32, 4), "Q4_K": (256, 4), "Q5_K": (256, 4),
             "Q6_K": (256, 0), "IQ4_XS": (256, 2), "F16": (16, 0)}
AMX_TILE_ROWS = 32  # AMX needs a multiple of 2 x TILE_N output rows


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a model that decide its memory use. Byte sizes are of the file's own tensors."""

    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer; models with per-layer KV heads store an array
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] = ()  # per layer: True for sliding-window layers
    n_expert: int = 0
    n_expert_used: int = 0
    file_type: str | None = None
    layer_bytes: tuple[int, ...] = ()  # weights of each repeating block
    other_bytes: int = 0  # embeddings, output head, norms: what is not in a block
    output_bytes: int = 0  # the output head (tied to the embeddings when the file has none)
    output_tied: bool = False  # no output.weight: the head reuses the embeddings, which stay on the CPU too
    total_bytes: int = 0
    files: tuple[str, ...] = field(default=())
    # Bytes llama.cpp's AMX weight buffer adds to each block, and to the output head, when AMX is used.
    amx_layer_extra: tuple[int, ...] = ()
    amx_output_extra: int = 0

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.other_bytes

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = safejson.loads(text)
        for key in ("n_head_kv", "swa_layers", "layer_bytes", "files", "amx_layer_extra"):
            data[key] = tuple(data[key])
        return cls(**data)


def spec_from_metadata(meta: dict[str, Any], tensors: list[tuple], name: str, files: tuple[str, ...] = ()) -> ModelSpec:
    """Build a ModelSpec from GGUF key/values and (tensor name, byte size[, AMX extra bytes]) tuples."""
    arch = str(meta["general.architecture"])

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    try:
        check_layers(meta)
    except HeaderError as exc:
        raise ModelLoadError(name, str(exc)) from None
    n_layer = int(get("block_count"))
    n_embd = int(get("embedding_length"))
    n_head = _per_layer(get("attention.head_count", 0), n_layer)
    n_head_kv = _per_layer(get("attention.head_count_kv", get("attention.head_count", 0)), n_layer)
    head_max = max(n_head) or 1
    head_dim_k = int(get("attention.key_length", n_embd // head_max))
    head_dim_v = int(get("attention.value_length", head_dim_k))
    window = get("attention.sliding_window")
    sliding_window = int(window) if window else None
    swa_layers: tuple[bool, ...] = ()
    if sliding_window:
        pattern = get("attention.sliding_window_pattern")
        if isinstance(pattern, (list, tuple)):
            swa_layers = tuple(bool(x) for x in pattern[:n_layer])
        else:
            every = int(pattern) if pattern else SWA_PATTERN_BY_ARCH.get(arch, 0)
            # The last layer of each group of `every` is global; no pattern means all are SWA.
            swa_layers = tuple(not every or (i % every) < every - 1 for i in range(n_layer))
    vocab = get("vocab_size") or meta.get("tokenizer.ggml.tokens_count") or 0
    n_ff = get("feed_forward_length", 0)
    n_ff = max(n_ff) if isinstance(n_ff, (list, tuple)) else int(n_ff)

    layer_bytes = [0] * n_layer
    amx_extra = [0] * n_layer
    other = output = amx_output = 0
    embeddings = 0
    for tensor_name, size, *amx in tensors:
        match = re.match(r"blk\.(\d+)\.", tensor_name)
        if match and int(match.group(1)) < n_layer:
            layer_bytes[int(match.group(1))] += size
            amx_extra[int(match.group(1))] += amx[0] if amx else 0
        else:
            other += size
            if tensor_name == "output.weight":
                output = size
                amx_output = amx[0] if amx else 0
            elif tensor_name == "token_embd.weight":
                embeddings = size
    return ModelSpec(
        name=name,
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(n_head),
        n_head_kv=tuple(n_head_kv),
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_ff=n_ff,
        n_vocab=int(vocab),
        n_ctx_train=int(get("context_length", 0)),
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        n_expert=int(get("expert_count", 0) or 0),
        n_expert_used=int(get("expert_used_count", 0) or 0),
        file_type=_file_type_name(meta.get("general.file_type")),
        layer_bytes=tuple(layer_bytes),
        other_bytes=other,
        output_bytes=output or embeddings,
        output_tied=not output,
        total_bytes=sum(layer_bytes) + other,
        files=files,
        amx_layer_extra=tuple(amx_extra),
        amx_output_extra=amx_output,
    )


def _per_layer(value: Any, n_layer: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value[:n_layer]]
    return [int(value)] * n_layer


def _file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)


def type_sizes() -> dict[int, tuple[int, int]]:
    """{ggml type number: (elements per block, bytes per block)}, from the gguf package."""
    from gguf import GGML_QUANT_SIZES

    return {int(kind): sizes for kind, sizes in GGML_QUANT_SIZES.items()}


def header_facts(path: Path, cache_dir: Path | None = None) -> dict[str, object]:
    """The bounded header check of every part of a local GGUF (see gguf_header), cached by the
    files' identity: the load path runs it every time, so the second time costs a file read."""
    parts = split_files(path)
    key = _identity(parts, "header")
    cached = cache_dir / f"{key}.json" if cache_dir else None
    if cached is not None:
        try:
            return safejson.loads(cached.read_text())
        except (OSError, ValueError):
            pass
    try:
        meta = scan_file(parts[0])
        check_layers(meta)
        for part in parts[1:]:
            scan_file(part)
    except HeaderError as exc:
        raise ModelLoadError(path, f"invalid or truncated GGUF file ({exc})") from None
    except OSError as exc:
        raise ModelLoadError(path, exc.strerror or str(exc)) from None
    arch = meta["general.architecture"]
    trained = meta.get(f"{arch}.context_length")
    facts = {"architecture": arch, "n_ctx_train": trained if isinstance(trained, int) else None,
             "embedding_only": arch in ENCODER_ARCHITECTURES or f"{arch}.pooling_type" in meta}
    if cached is not None:
        _write_cache(cached, json.dumps(facts))
    return facts


def _identity(parts: list[Path], kind: str) -> str:
    return hashlib.sha256(
        f"v{SPEC_VERSION}|{kind}|".encode()
        + "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts).encode()
    ).hexdigest()[:32]


def _write_cache(path: Path, text: str) -> None:
    """The cache only saves time: a read-only or full cache folder is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass


def amx_extra_bytes(name: str, type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes llama.cpp's AMX buffer adds to this tensor over its size in the file (0 if AMX
    would not take it), following the checks of ggml-cpu/amx/amx.cpp's supports_op."""
    if not MATMUL_WEIGHT.match(name) or len(shape) != 2 or type_name not in AMX_TYPES:
        return 0
    row_alignment, extra_per_block = AMX_TYPES[type_name]
    cols, rows = shape
    if rows % AMX_TILE_ROWS or cols % row_alignment:
        return 0
    return rows * (cols // row_alignment) * extra_per_block


def read_reader(reader: Any) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """Key/values (tokenizer arrays left out) and (name, bytes, AMX extra bytes) of each tensor."""
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            if key == "tokenizer.ggml.tokens":
                meta["tokenizer.ggml.tokens_count"] = len(fld.data)
            continue
        try:
            meta[key] = fld.contents()
        except Exception:  # a value type this gguf version cannot decode is not one we need
            continue
    tensors = [(t.name, int(t.n_bytes), amx_extra_bytes(t.name, t.tensor_type.name, tuple(int(n) for n in t.shape)))
               for t in reader.tensors]
    return meta, tensors


def inspect_file(path: Path, cache_dir: Path | None = None) -> ModelSpec:
    """A local GGUF (every part of a split one), cached by the files' size and modification time."""
    parts = split_files(path)
    missing = [p for p in parts if not p.exists()]
    if missing:
        raise ModelLoadError(path, f"split GGUF is missing {len(missing)} of {len(parts)} parts, e.g. {missing[0].name}")
    key = _identity(parts, "spec")
    cached = cache_dir / f"{key}.json" if cache_dir else None
    if cached and cached.exists():
        try:
            return ModelSpec.from_json(cached.read_text())
        except (ValueError, TypeError, KeyError):
            pass  # a cache from another version: read the file again
    spec = _read_parts(parts, path.name)
    if cached:
        _write_cache(cached, spec.to_json())
    return spec


def _read_parts(parts: list[Path], name: str) -> ModelSpec:
    from gguf import GGUFReader

    meta: dict[str, Any] = {}
    tensors: list[tuple] = []
    for part in parts:
        try:
            scan_file(part, type_sizes())  # bounded: GGUFReader allocates whatever the header claims
        except HeaderError as exc:
            raise ModelLoadError(part, f"invalid or truncated GGUF file ({exc})") from None
        try:
            reader = GGUFReader(part)
        except Exception as exc:  # gguf raises ValueError, struct.error, IndexError on bad files
            raise ModelLoadError(part, f"not a readable GGUF file ({exc})") from exc
        part_meta, part_tensors = read_reader(reader)
        meta = {**part_meta, **meta}  # the first part holds the model's metadata
        tensors += part_tensors
    if "general.architecture" not in meta:
        raise ModelLoadError(parts[0], "the GGUF metadata names no architecture")
    return spec_from_metadata(meta, tensors, name, tuple(p.name for p in parts))


def inspect_remote(repo_id: str, filename: str, revision: str = "main", endpoint: str | None = None,
                   first_chunk: int = 4 * 2**20, max_header: int = 1024 * 2**20) -> ModelSpec:
    """A GGUF on the Hub (or a Hub-compatible server) from its header alone, before downloading it.

    Range requests fetch the start of the file into a sparse file of the full size, which is
    what GGUFReader (it memory-maps the whole file) needs; the fetched span doubles until the
    header is complete. Split GGUFs are read part by part.
    """
    import tempfile

    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    session, headers = get_session(), build_hf_headers()
    parts = [p.name for p in split_files(Path(filename))]
    folder = str(Path(filename).parent) if Path(filename).parent != Path(".") else None
    meta: dict[str, Any] = {}
    tensors: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="localllm-header-") as tmp:
        for part in parts:
            remote = f"{folder}/{part}" if folder else part
            url = hf_hub_url(repo_id, remote, revision=revision, endpoint=endpoint)
            part_meta, part_tensors = _read_remote_header(session, headers, url, f"{repo_id}/{remote}", Path(tmp) / part,
                                                          first_chunk, max_header)
            meta = {**part_meta, **meta}
            tensors += part_tensors
    if "general.architecture" not in meta:
        raise ModelLoadError(filename, "the GGUF metadata names no architecture")
    return spec_from_metadata(meta, tensors, Path(filename).name, tuple(parts))


def _read_remote_header(session: Any, headers: dict, url: str, label: str, sparse: Path, chunk: int, max_header: int):
    from gguf import GGUFReader
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status

    from .hub import follow, http_timeout, hub_errors

    fetched, total = 0, None
    with open(sparse, "wb") as out:
        while True:
            # Timeouts on connect and on every read, and the token only for the endpoint's origin.
            with hub_errors(label), follow(session, url, {"Range": f"bytes={fetched}-{fetched + chunk - 1}"}, headers,
                                           http_timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT), label) as response:
                if response.status_code >= 400:
                    response.read()  # huggingface_hub's error names what the server said
                    hf_raise_for_status(response)
                body = bytearray()
                for part in response.iter_bytes(1 << 16):  # never more than asked, if the server ignores Range
                    body += part
                    if len(body) >= chunk:
                        break
            if response.status_code == 200:  # the server ignored the range: the file from its start
                total, fetched = int(response.headers.get("content-length", len(body))), 0
            elif total is None:
                total = int(response.headers.get("content-range", "/0").rsplit("/", 1)[1])
            out.seek(fetched)
            out.write(body)
            fetched += len(body)
            out.truncate(max(total or 0, fetched))
            out.flush()
            try:
                with open(sparse, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    scan(data, fetched, total, type_sizes())
                return read_reader(GGUFReader(sparse))
            except Truncated as exc:
                needed = exc.needed
            except HeaderError as exc:
                raise ModelLoadError(url, f"invalid or truncated GGUF file ({exc})") from None
            if fetched >= (total or 0) or needed > max_header:
                raise ModelLoadError(url, "not a GGUF file, or its header is larger than localllm reads")
            chunk = max(chunk * 2, needed - fetched)
