"""Hardware readers and the load planner on recorded machines (tests/data/profiles.json).

The readings are replayed through the same reader functions detect() uses: /proc/cpuinfo text,
sysfs files, NVML calls answering with pynvml's own types and errors, macOS sysctl values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pynvml

from localllm.backends.llamacpp.estimate import MIB
from localllm.backends.llamacpp.planner import Overrides, plan, plan_quants
from localllm.gguf_info import ModelSpec
from localllm.hardware import (
    BuildInfo,
    DeviceInfo,
    build_profile,
    default_threads,
    metal_working_set,
    read_apple_gpu,
    read_cgroup_limit,
    read_cpu_linux,
    read_cpu_macos,
    read_drm,
    read_memory,
    read_nvidia,
)

PROFILES = json.loads((Path(__file__).parent / "data" / "profiles.json").read_text())


class ReplayNVML:
    """pynvml's calls, answering with recorded readings in pynvml's own types."""

    def __init__(self, recorded: dict | None, init_error: Exception | None = None):
        self.recorded, self.init_error = recorded, init_error

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error
        if self.recorded is None:
            raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return self.recorded["driver"]

    def nvmlDeviceGetCount(self):
        return len(self.recorded["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.recorded["gpus"][index]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        memory = pynvml.c_nvmlMemory_t()
        memory.total, memory.used = handle["total"], handle["used"]
        memory.free = handle["total"] - handle["used"]
        return memory

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return tuple(handle["cc"])


def profile(name: str, tmp_path: Path, gpu_offload: bool | None = None):
    recorded = PROFILES[name]
    build = BuildInfo(recorded["build"]["gpu_offload"] if gpu_offload is None else gpu_offload,
                      tuple(DeviceInfo(*d) for d in recorded["build"]["devices"]))
    m = recorded["memory"]
    memory = read_memory(m["total"], m["available"], m["swap_total"], m["swap_free"], (None, None))
    if recorded["os"] == "Darwin":
        sysctl = recorded["sysctl"]
        gpu = read_apple_gpu(sysctl, metal_working_set(build))
        return build_profile("Darwin", read_cpu_macos(sysctl), memory, [gpu], build, [])
    sysfs = tmp_path / name
    for pmu, cpus in recorded.get("hybrid", {}).items():
        (sysfs / "devices" / pmu).mkdir(parents=True)
        (sysfs / "devices" / pmu / "cpus").write_text(cpus + "\n")
    cpu = read_cpu_linux(recorded["cpuinfo"], sysfs, recorded["logical"], recorded["physical"], recorded["logical"])
    gpus, notes = read_nvidia(ReplayNVML(recorded["nvml"]))
    return build_profile("Linux", cpu, memory, gpus, build, notes)


def llama_spec(name: str, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, file_bytes: int,
               quant: str, vocab: int = 128256, ctx: int = 131072) -> ModelSpec:
    """A Llama 3.x GGUF's shapes (from its config.json) and bytes (from the published file size)."""
    embd = vocab * n_embd * 9 // 16  # Q4_K: 144 bytes per 256 weights
    output = vocab * n_embd * 105 // 128  # Q6_K: 210 bytes per 256 weights
    layer = (file_bytes - embd - output) // n_layer
    return ModelSpec(name, "llama", n_layer, n_embd, n_head, (n_head_kv,) * n_layer, n_embd // n_head,
                     n_embd // n_head, n_ff, vocab, ctx, file_type=quant, layer_bytes=(layer,) * n_layer,
                     other_bytes=embd + output, output_bytes=output, total_bytes=file_bytes)


LLAMA_8B = llama_spec("Llama-3.1-8B-Instruct-Q4_K_M.gguf", 32, 4096, 14336, 32, 8, 4_920_734_016, "Q4_K_M")
LLAMA_8B_Q8 = llama_spec("Llama-3.1-8B-Instruct-Q8_0.gguf", 32, 4096, 14336, 32, 8, 8_540_770_688, "Q8_0")
LLAMA_8B_Q2 = llama_spec("Llama-3.1-8B-Instruct-Q2_K.gguf", 32, 4096, 14336, 32, 8, 3_179_136_384, "Q2_K")
LLAMA_70B = llama_spec("Llama-3.3-70B-Instruct-Q4_K_M.gguf", 80, 8192, 28672, 64, 8, 42_520_398_432, "Q4_K_M")


def assert_fits(p) -> None:
    for device, margin, budget in zip(p.estimate.devices, p.margins, p.budgets):
        assert device.total == 0 or device.total + margin <= budget, (device, budget)


# --- readers -------------------------------------------------------------------------------------


def test_laptop_cpu_without_nvml_library(tmp_path):
    hw = profile("laptop_8gb_cpu", tmp_path)
    assert hw.cpu.model.startswith("Intel(R) Core(TM) i5-8250U")
    assert (hw.cpu.physical_cores, hw.cpu.logical_cores) == (4, 8)
    assert set(hw.cpu.features) >= {"avx", "avx2", "fma", "f16c"} and "avx512f" not in hw.cpu.features
    assert hw.gpus == () and hw.notes == ()


def test_hybrid_cpu_counts_performance_cores(tmp_path):
    hw = profile("desktop_24gb_gpu", tmp_path)
    assert (hw.cpu.performance_cores, hw.cpu.efficiency_cores) == (8, 16)
    assert "avx_vnni" in hw.cpu.features
    assert default_threads(hw.cpu) == 8, "E-cores and hyper-threads slow llama.cpp down"
    assert default_threads(hw.cpu, busy_elsewhere=26.0) == 6


def test_nvidia_gpus_from_nvml(tmp_path):
    hw = profile("workstation_2x80gb", tmp_path)
    assert [g.name for g in hw.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert all(g.total == 81559 * MIB and g.compute_capability == "9.0" and g.driver == "550.54.15" for g in hw.gpus)
    assert {"avx512f", "avx512_vnni", "amx_tile"} <= set(hw.cpu.features)


def test_memory_used_by_other_processes_is_not_free(tmp_path):
    gpu = profile("desktop_24gb_gpu", tmp_path).gpus[0]
    assert gpu.total == 24564 * MIB
    assert gpu.free == (24564 - 507) * MIB


def test_nvml_without_permission_is_a_note_not_a_crash():
    gpus, notes = read_nvidia(ReplayNVML(None, pynvml.NVMLError_NoPermission(pynvml.NVML_ERROR_NO_PERMISSION)))
    assert gpus == [] and "could not be read" in notes[0]


def test_amd_and_intel_gpus_from_sysfs(tmp_path):
    # The amdgpu driver's files: vendor id, VRAM total and used in bytes; an Intel iGPU has no VRAM.
    cards = {"card0": {"vendor": "0x1002", "device": "0x744c", "mem_info_vram_total": "25753026560",
                       "mem_info_vram_used": "1073741824", "product_name": "Radeon RX 7900 XTX"},
             "card1": {"vendor": "0x8086", "device": "0xa780"}}
    for card, files in cards.items():
        device = tmp_path / "class" / "drm" / card / "device"
        device.mkdir(parents=True)
        for name, value in files.items():
            (device / name).write_text(value + "\n")
    (tmp_path / "class" / "drm" / "card0-DP-1").mkdir()  # connectors are not cards
    amd, intel = read_drm(tmp_path, first_index=1)
    assert (amd.index, amd.vendor, amd.name, amd.total, amd.free) == (1, "amd", "Radeon RX 7900 XTX", 25753026560, 24679284736)
    assert not amd.unified
    assert (intel.vendor, intel.total, intel.unified) == ("intel", None, True), "unknown, never guessed"


def test_apple_unified_memory(tmp_path):
    hw = profile("apple_m_32gb", tmp_path)
    (gpu,) = hw.gpus
    assert gpu.unified and gpu.vendor == "apple"
    assert gpu.total == 22906503168, "Metal may use its recommended working set, not all 32 GB"
    assert (hw.cpu.performance_cores, hw.cpu.efficiency_cores) == (8, 2)
    sysctl = dict(PROFILES["apple_m_32gb"]["sysctl"], **{"iogpu.wired_limit_mb": "28672"})
    assert read_apple_gpu(sysctl, 22906503168).total == 28672 * MIB, "a raised wired limit wins"


def test_cgroup_limits(tmp_path):
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    limit = read_cgroup_limit(tmp_path)
    assert limit == (4294967296, 1073741824)
    memory = read_memory(64 * 2**30, 60 * 2**30, 0, 0, limit)
    assert (memory.total, memory.available, memory.cgroup_limit) == (4 * 2**30, 3 * 2**30, 4 * 2**30)
    (tmp_path / "memory.max").write_text("max\n")
    assert read_cgroup_limit(tmp_path) == (None, None)
    assert read_cgroup_limit(tmp_path / "absent") == (None, None)


# --- planner -------------------------------------------------------------------------------------


def test_8gb_laptop_runs_8b_on_cpu(tmp_path):
    p = plan(profile("laptop_8gb_cpu", tmp_path), LLAMA_8B)
    assert p.fit == "cpu" and p.shape.n_gpu_layers == 0
    assert p.n_threads == 4
    assert_fits(p)
    assert "CPU" in p.explanation


def test_6gb_gpu_takes_8b_whole_at_4k_context(tmp_path):
    p = plan(profile("laptop_16gb_6gb_gpu", tmp_path), LLAMA_8B)
    assert p.fit == "gpu"
    assert_fits(p)


def test_6gb_gpu_gets_a_partial_offload_at_16k_context(tmp_path):
    wanted = Overrides(n_ctx=16384, kv_type="f16")
    p = plan(profile("laptop_16gb_6gb_gpu", tmp_path), LLAMA_8B, wanted)
    assert p.fit == "partial"
    assert 15 <= p.shape.n_gpu_layers < 33
    assert_fits(p)
    assert f"{p.shape.n_gpu_layers} of 33 layers" in p.explanation
    # One more layer must not fit: the planner uses the VRAM, not a timid fraction of it.
    more = plan(profile("laptop_16gb_6gb_gpu", tmp_path), LLAMA_8B,
                Overrides(n_ctx=16384, kv_type="f16", n_gpu_layers=p.shape.n_gpu_layers + 1))
    gpu, margin, budget = more.estimate.gpus[0], more.margins[1], more.budgets[1]
    assert gpu.total + margin > budget


def test_24gb_gpu_fits_8b_entirely(tmp_path):
    p = plan(profile("desktop_24gb_gpu", tmp_path), LLAMA_8B)
    assert p.fit == "gpu" and p.shape.n_gpu_layers == 33
    assert p.shape.n_ctx == 4096 and p.shape.kv_type == "f16"
    assert_fits(p)


def test_70b_is_split_across_two_80gb_gpus(tmp_path):
    p = plan(profile("workstation_2x80gb", tmp_path), LLAMA_70B)
    assert p.fit == "gpu"
    assert p.shape.tensor_split == (84986691584.0, 84986691584.0) or len(p.shape.tensor_split) == 2
    gpu0, gpu1 = p.estimate.gpus
    assert gpu0.weights > 0 and gpu1.weights > 0
    assert abs(gpu0.weights - gpu1.weights) < 0.1 * gpu0.weights
    assert_fits(p)


def test_apple_unified_memory_runs_8b_on_metal(tmp_path):
    p = plan(profile("apple_m_32gb", tmp_path), LLAMA_8B)
    assert p.fit == "gpu"
    assert_fits(p)


def test_gpu_the_build_cannot_use_is_reported(tmp_path):
    hw = profile("desktop_24gb_gpu", tmp_path, gpu_offload=False)
    p = plan(hw, LLAMA_8B)
    assert p.fit == "cpu"
    assert any("packaging/README.md" in w for w in p.warnings)
    assert "cannot offload" in p.explanation


def test_user_overrides_win(tmp_path):
    hw = profile("laptop_16gb_6gb_gpu", tmp_path)
    assert plan(hw, LLAMA_8B, Overrides(n_gpu_layers=0)).fit == "cpu"
    fixed = plan(hw, LLAMA_8B, Overrides(n_ctx=16384, kv_type="q8_0"))
    assert (fixed.shape.n_ctx, fixed.shape.kv_type) == (16384, "q8_0")


def test_too_big_warns_instead_of_refusing(tmp_path):
    p = plan(profile("laptop_8gb_cpu", tmp_path), LLAMA_70B)
    assert p.fit == "none"
    assert any("--load-anyway" in w for w in p.warnings)
    forced = plan(profile("laptop_8gb_cpu", tmp_path), LLAMA_70B, Overrides(load_anyway=True))
    assert any("loading anyway" in w for w in forced.warnings)


def test_context_shrinks_before_giving_up(tmp_path):
    hw = profile("laptop_8gb_cpu", tmp_path)
    wide = llama_spec("wide", 32, 4096, 14336, 32, 32, 4_600_000_000, "Q4_K_M")  # no GQA: 4x the KV cache
    p = plan(hw, wide)
    assert p.fit == "cpu"
    assert p.shape.n_ctx < 4096 or p.shape.kv_type == "q8_0"
    assert_fits(p)


def test_quant_choice(tmp_path):
    best, plans = plan_quants(profile("desktop_24gb_gpu", tmp_path), [LLAMA_8B_Q2, LLAMA_8B, LLAMA_8B_Q8])
    assert best.spec is LLAMA_8B_Q8, "on a 24 GB GPU the best quality fits entirely"
    assert len(plans) == 3
    best, _ = plan_quants(profile("laptop_8gb_cpu", tmp_path), [LLAMA_8B_Q2, LLAMA_8B, LLAMA_8B_Q8])
    assert best.spec is LLAMA_8B, "on a CPU, Q4_K_M: Q8_0 does not fit and Q2_K loses too much"


def test_partial_offload_prefers_the_smaller_quant(tmp_path):
    """Layers that stay on the CPU run at its speed: past Q5_K_M a bigger quant costs more than it gives."""
    hw = profile("laptop_16gb_6gb_gpu", tmp_path)
    q6 = llama_spec("Qwen3-14B-Q6_K.gguf", 40, 5120, 17408, 40, 8, 12_120_000_000, "Q6_K")
    q8 = llama_spec("Qwen3-14B-Q8_0.gguf", 40, 5120, 17408, 40, 8, 15_700_000_000, "Q8_0")
    q5 = llama_spec("Qwen3-14B-Q5_K_M.gguf", 40, 5120, 17408, 40, 8, 10_510_000_000, "Q5_K_M")
    best, plans = plan_quants(hw, [q8, q6, q5])
    assert [p.fit for p in plans] == ["partial"] * 3
    assert best.spec is q5


def test_a_growing_cache_asks_for_the_trained_window_and_halves_it_until_it_fits(tmp_path):
    """`run` opens its KV cache small and grows it: its default window is all the model was
    trained on if free memory holds it whole, else the longest halving that fits. A cache
    allocated whole (serve, the chat app) keeps the 4096-token default."""
    laptop = profile("laptop_8gb_cpu", tmp_path)  # 5.5 GiB available
    small = llama_spec("Llama-3.2-3B-Instruct", 28, 3072, 8192, 24, 8, 2_019_377_696, "Q4_K_M")
    grown = plan(laptop, small, Overrides(grow=True))
    assert grown.fit == "cpu" and 4096 < grown.shape.n_ctx < small.n_ctx_train, grown.shape
    assert plan(laptop, small, Overrides(n_ctx=grown.shape.n_ctx * 2, kv_type=grown.shape.kv_type)).fit == "none"
    assert not grown.warnings, "a default the machine cannot hold whole is no warning"
    assert plan(laptop, small).shape.n_ctx == 4096
    big = plan(profile("workstation_2x80gb", tmp_path), small, Overrides(grow=True))
    assert big.shape.n_ctx == small.n_ctx_train
    assert f"{grown.shape.n_ctx}-token context" in grown.explanation


def test_a_draft_model_is_planned_in_the_memory_its_target_leaves(tmp_path):
    laptop = profile("laptop_16gb_6gb_gpu", tmp_path)
    draft = llama_spec("Llama-3.2-1B-Instruct-Q4_K_M.gguf", 16, 2048, 8192, 32, 8, 807_694_464, "Q4_K_M")
    alone = plan(laptop, draft, Overrides(n_ctx=4096))
    assert alone.fit == "gpu", "alone, the 1B fits the 6 GB GPU whole"
    target = plan(laptop, LLAMA_8B, Overrides(n_ctx=4096))
    taken = target.taken
    assert taken == tuple(d.total + m for d, m in zip(target.estimate.devices, target.margins))
    beside = plan(laptop, draft, Overrides(n_ctx=4096, reserved=taken))
    assert beside.shape.n_gpu_layers < alone.shape.n_gpu_layers, "the 8B holds most of the GPU"
    for device, own, budget in zip(beside.estimate.devices, taken, alone.budgets):
        assert device.total == 0 or own + device.total <= budget, "both fit together"


def test_a_catalog_vision_model_is_planned_with_its_projector_beside_it(tmp_path):
    """The fit labels of `catalog`, `show` and `pull` count the projector, as a load of the installed model does."""
    from dataclasses import replace

    from localllm.catalog import load_catalog
    from localllm.store import entry_plans

    hw = profile("laptop_8gb_cpu", tmp_path)
    for name, size in (("gemma3", "4b"), ("smolvlm", "500m")):
        entry = load_catalog().find(name, size)
        assert entry.vision and entry.projector_bytes > 0
        seeing, _ = entry_plans(entry, hw, "Q8_0")
        blind, _ = entry_plans(replace(entry, projector_bytes=0), hw, "Q8_0")
        assert blind.budgets[0] - seeing.budgets[0] == entry.projector_bytes
