"""Whether llama.cpp's AMX kernels may run here: set by the user, or probed once and cached.

On some Intel Xeons with AMX, llama.cpp's AMX matrix kernels die with SIGILL on the first decode
(llama.cpp PR 26954, issue 28756), while the hardware itself works. Whether a build crashes on a
machine can only be learnt by running it, so a child process loads a tiny generated model with
llama.cpp's default buffers and decodes (``amx_probe.py``); death by a signal means "unusable".
The verdict is cached per llama.cpp build, CPU and kernel release. When AMX is not to be used the
backend loads without it and keeps the CPU repack kernels (``cpu_buffers``).

``LOCALLLM_AMX`` (or ``"amx"`` in the settings file) is ``auto`` (probe), ``on`` or ``off``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ... import crash, safejson
from ...config import cache_dir, config_path, load_config
from ...errors import UsageError
from ...hardware import AmxStatus, cpu_flags, cpu_model_name, read_cpuinfo

ENV = "LOCALLLM_AMX"
CONFIG_KEY = "amx"
MODES = ("auto", "on", "off")
CACHE_FILE = "amx-verdicts.json"
PROBE_MODEL = "amx-probe-1.gguf"
PROBE_TIMEOUT_S = 120
_MAX_CACHED = 32  # verdicts kept: one per build and CPU this cache folder has seen


@dataclass(frozen=True)
class ProbeResult:
    usable: bool | None  # None: the probe could not tell (it timed out or failed to run)
    detail: str


def configured_mode() -> tuple[str, str]:
    """(mode, where it was set): LOCALLLM_AMX first, then the settings file, else auto."""
    value = os.environ.get(ENV, "").strip()
    origin = ENV
    if not value:
        setting = load_config().get(CONFIG_KEY)
        if setting is None:
            return "auto", "default"
        value, origin = setting, f'"{CONFIG_KEY}" in {config_path()}'
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise UsageError(f"{origin} must be one of {', '.join(MODES)}, not {value!r}")
    return value.strip().lower(), origin


def decide(present: bool, in_build: bool, mode: str, origin: str, key: str, cache_file: Path,
           probe: Callable[[], ProbeResult]) -> AmxStatus:
    """The verdict for this machine: the user's setting, else a cached probe, else a new probe."""
    if mode == "off":
        return AmxStatus(present, in_build, mode, False, f"off by {origin}")
    if not in_build:
        return AmxStatus(present, False, mode, False, "this llama.cpp build has no AMX kernels")
    if mode == "on":
        return AmxStatus(present, True, mode, True, f"on by {origin}, unchecked")
    verdicts = _read_verdicts(cache_file)
    found = verdicts.get(key)
    if found is None:
        found = probe()
        if found.usable is None:
            return AmxStatus(present, True, mode, False, f"for now: the AMX check {found.detail}")
        verdicts[key] = found
        _write_verdicts(cache_file, verdicts)
    if found.usable:
        return AmxStatus(present, True, mode, True, "checked with this llama.cpp build")
    return AmxStatus(present, True, mode, False, f"crashes with this llama.cpp build: {found.detail}; {ENV}=on forces it")


def run_probe(command: list[str], timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run a probe child; its death by a signal is the "unusable" verdict."""
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ProbeResult(None, f"timed out after {timeout:.0f} s")
    except OSError as exc:
        return ProbeResult(None, f"could not start ({exc.strerror or exc})")
    if proc.returncode < 0:
        return ProbeResult(False, f"the check died with {_signal_name(-proc.returncode)}")
    said = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == 0 and said[-1:] == ["ok"]:
        return ProbeResult(True, "ok")
    reason = said[-1] if said else f"exit status {proc.returncode}"
    return ProbeResult(None, f"failed: {reason[:200]}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_verdicts(cache_file: Path) -> dict[str, ProbeResult]:
    """Cached verdicts; a missing, unreadable or malformed cache is empty (it is only an optimisation)."""
    try:
        data = safejson.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        key: ProbeResult(value["usable"], str(value.get("detail", ""))[:200])
        for key, value in list(data.items())[:_MAX_CACHED]
        if isinstance(value, dict) and isinstance(value.get("usable"), bool)
    }


def _write_verdicts(cache_file: Path, verdicts: dict[str, ProbeResult]) -> None:
    kept = list(verdicts.items())[-_MAX_CACHED:]
    data = {key: {"usable": r.usable, "detail": r.detail} for key, r in kept}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".amx-", dir=cache_file.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only cache only means probing again next time


def build_key(library_dir: Path, version: str, cpuinfo: str) -> str:
    """Identifies the llama.cpp build (its libraries' names, sizes, times), the CPU and the kernel."""
    libraries = []
    for path in sorted(library_dir.iterdir()) if library_dir.is_dir() else ():
        try:
            stat = path.stat()
        except OSError:
            continue
        libraries.append([path.name, stat.st_size, stat.st_mtime_ns])
    identity = [version, libraries, cpu_model_name(cpuinfo), sorted(cpu_flags(cpuinfo)), platform.release()]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def write_probe_model(path: Path) -> Path:
    """A tiny llama-architecture GGUF whose matmul weights are of the types AMX serves (Q4_0,
    Q4_1, Q8_0) and of shapes it accepts (multiples of 32): 1.3 MB, written in milliseconds."""
    import gguf
    import numpy as np

    n_embd, n_ff, n_vocab, n_head = 256, 512, 320, 4
    rng = np.random.default_rng(17)

    def weights(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * 0.05

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(n_vocab - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    quant = gguf.GGMLQuantizationType
    tensors = {
        "token_embd.weight": (weights(n_vocab, n_embd), quant.F32),
        "blk.0.attn_norm.weight": (np.ones(n_embd, dtype=np.float32), quant.F32),
        "blk.0.attn_q.weight": (weights(n_embd, n_embd), quant.Q4_0),
        "blk.0.attn_k.weight": (weights(n_embd, n_embd), quant.Q4_0),
        "blk.0.attn_v.weight": (weights(n_embd, n_embd), quant.Q8_0),
        "blk.0.attn_output.weight": (weights(n_embd, n_embd), quant.Q4_1),
        "blk.0.ffn_norm.weight": (np.ones(n_embd, dtype=np.float32), quant.F32),
        "blk.0.ffn_gate.weight": (weights(n_ff, n_embd), quant.Q4_0),
        "blk.0.ffn_up.weight": (weights(n_ff, n_embd), quant.Q4_1),
        "blk.0.ffn_down.weight": (weights(n_embd, n_ff), quant.Q8_0),
        "output_norm.weight": (np.ones(n_embd, dtype=np.float32), quant.F32),
        "output.weight": (weights(n_vocab, n_embd), quant.Q8_0),
    }
    for name, (data, qtype) in tensors.items():
        if qtype == quant.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _cached_probe_model() -> Path:
    """The probe's model in the cache folder, written there once."""
    path = cache_dir() / PROBE_MODEL
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".amx-probe-", suffix=".gguf", dir=path.parent)
        os.close(fd)
        try:
            write_probe_model(Path(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def _probe_here() -> ProbeResult:
    def probe(model: Path) -> ProbeResult:
        return run_probe([sys.executable, str(Path(__file__).with_name("amx_probe.py")), str(model)])

    try:
        return probe(_cached_probe_model())
    except OSError:
        # A read-only cache: a private folder for this one probe (never a shared, guessable path).
        with tempfile.TemporaryDirectory(prefix="localllm-amx-") as folder:
            return probe(write_probe_model(Path(folder) / PROBE_MODEL))


_status: AmxStatus | None = None


def status() -> AmxStatus:
    """This process's verdict, decided once (a probe runs at most once per build and machine)."""
    global _status
    if _status is None:
        import llama_cpp

        from .cpu_buffers import AMX, extra_buffer_types

        cpuinfo = read_cpuinfo()
        flags = cpu_flags(cpuinfo)
        mode, origin = configured_mode()
        key = build_key(Path(llama_cpp.__file__).parent / "lib", llama_cpp.__version__, cpuinfo)
        _status = decide({"amx_tile", "amx_int8"} <= flags, AMX in extra_buffer_types(), mode, origin, key,
                         cache_dir() / CACHE_FILE, _probe_here)
        crash.note_amx(_status.present, _status.in_use)
    return _status
