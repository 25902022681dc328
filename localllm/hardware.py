"""What this machine has: CPU, memory, GPUs. Pure data out; every reading can be replayed in tests.

Each reader takes its source as an argument (a sysfs root, an NVML module, sysctl values), so
tests replay real recorded readings through the same code. Anything that cannot be read is
None ("unknown"), never a guess.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Instruction-set extensions llama.cpp's CPU kernels pick between, by the names Linux uses.
X86_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2", "fphp": "fp16"}
CGROUP_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a page-rounded 2^63


@dataclass(frozen=True)
class CpuInfo:
    model: str | None
    physical_cores: int | None
    logical_cores: int | None
    performance_cores: int | None = None
    efficiency_cores: int | None = None
    features: tuple[str, ...] = ()
    usable_cpus: int | None = None  # affinity mask or container cpuset


@dataclass(frozen=True)
class MemoryInfo:
    total: int
    available: int
    swap_total: int = 0
    swap_free: int = 0
    cgroup_limit: int | None = None  # a container's memory limit, when below the machine's


@dataclass(frozen=True)
class GpuInfo:
    index: int
    vendor: str  # "nvidia", "amd", "intel", "apple"
    name: str
    total: int | None  # bytes of memory this GPU can use; None when unknown
    free: int | None  # after what other processes use
    compute_capability: str | None = None
    driver: str | None = None
    unified: bool = False  # shares system RAM (Apple Silicon, integrated GPUs)


@dataclass(frozen=True)
class DeviceInfo:
    """A llama.cpp backend device, with memory as llama.cpp itself sees it."""

    name: str  # e.g. "CUDA0", "Metal", "CPU", "RPC0"
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free: int
    total: int
    description: str = ""  # an RPC worker's HOST:PORT

    @property
    def remote(self) -> bool:
        """An RPC worker's device (localllm.backends.llamacpp.rpc), not one of this machine's."""
        return self.name.startswith("RPC")


@dataclass(frozen=True)
class AmxStatus:
    """Intel AMX (Xeon 4th generation and later) against the installed llama.cpp build.

    Some llama.cpp builds die with SIGILL in their AMX kernels on CPUs that have AMX (issue 17),
    so whether they are used is decided per build and CPU by a probe in a child process.
    """

    present: bool  # the CPU advertises AMX (amx_tile and amx_int8)
    in_build: bool  # llama.cpp's CPU backend offers its AMX weight buffer
    mode: str  # "auto", "on" or "off", as LOCALLLM_AMX or the settings file say
    in_use: bool
    detail: str  # why, in a few words

    def describe(self) -> str:
        """E.g. "present, in use (checked with this llama.cpp build)", "present, disabled (crashes ...)"."""
        presence = "present" if self.present else "not reported by the CPU"
        state = "in use" if self.in_use else "disabled" if self.in_build else "not used"
        return f"{presence}, {state} ({self.detail})"


@dataclass(frozen=True)
class BuildInfo:
    """What the installed llama-cpp-python can do."""

    gpu_offload: bool  # to this machine's own GPUs
    devices: tuple[DeviceInfo, ...] = ()
    amx: AmxStatus | None = None


@dataclass(frozen=True)
class HardwareProfile:
    os: str
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: tuple[GpuInfo, ...] = ()
    build: BuildInfo | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def offload_gpus(self) -> tuple[GpuInfo, ...]:
        """Devices llama.cpp can offload layers to, in its order: RPC workers' first, then this
        machine's GPUs with known memory (none if the build cannot use them)."""
        remote = tuple(GpuInfo(i, "rpc", f"{d.name} at {d.description}", d.total, d.free)
                       for i, d in enumerate(d for d in (self.build.devices if self.build else ()) if d.remote))
        if self.build is not None and not self.build.gpu_offload:
            return remote
        return remote + tuple(g for g in self.gpus if g.total is not None and not (g.unified and g.vendor != "apple"))


# --- CPU ---------------------------------------------------------------------------------------


def read_cpu_linux(cpuinfo: str, sysfs: Path, logical: int | None, physical: int | None, usable: int | None) -> CpuInfo:
    model = cpu_model_name(cpuinfo)
    flags = cpu_flags(cpuinfo)
    features = [f for f in X86_FEATURES if f in flags] + [name for flag, name in ARM_FEATURES.items() if flag in flags]
    # Intel hybrid CPUs list their P-cores and E-cores as two PMUs.
    perf = _count_cpu_list(sysfs / "devices" / "cpu_core" / "cpus")
    eff = _count_cpu_list(sysfs / "devices" / "cpu_atom" / "cpus")
    if perf is not None and eff is not None:
        # The lists count hyper-threads; P-cores have two each when SMT is on.
        smt = logical is not None and physical is not None and logical > physical
        perf = perf // 2 if smt else perf
    return CpuInfo(model, physical, logical, perf, eff, tuple(features), usable)


def cpu_model_name(cpuinfo: str) -> str | None:
    return _first(re.findall(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE))


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first CPU's feature flags, as /proc/cpuinfo lists them."""
    return set((_first(re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE)) or "").split())


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def read_cpu_macos(sysctl: dict[str, str]) -> CpuInfo:
    def number(key: str) -> int | None:
        value = sysctl.get(key)
        return int(value) if value is not None and value.strip().isdigit() else None

    features = [name for key, name in (
        ("hw.optional.neon", "neon"), ("hw.optional.arm.FEAT_DotProd", "dotprod"), ("hw.optional.arm.FEAT_I8MM", "i8mm"),
        ("hw.optional.arm.FEAT_BF16", "bf16"), ("hw.optional.avx2_0", "avx2"), ("hw.optional.avx512f", "avx512f"),
    ) if sysctl.get(key) == "1"]
    return CpuInfo(
        model=sysctl.get("machdep.cpu.brand_string"),
        physical_cores=number("hw.physicalcpu"),
        logical_cores=number("hw.logicalcpu"),
        performance_cores=number("hw.perflevel0.physicalcpu"),
        efficiency_cores=number("hw.perflevel1.physicalcpu"),
        features=tuple(features),
        usable_cpus=number("hw.logicalcpu"),
    )


def _count_cpu_list(path: Path) -> int | None:
    """Count the CPUs in a sysfs list such as "0-15,24"."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    count = 0
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity masks and container cpusets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity API
        return os.cpu_count() or 1


def default_threads(cpu: CpuInfo | None = None, busy_elsewhere: float = 0.0) -> int:
    """Thread count for llama.cpp: physical performance cores, fewer when the machine is busy.

    Hyper-threads share a core's vector units and efficiency cores make the fast ones wait at
    every barrier, so both usually slow llama.cpp down (DESIGN.md, complaint 8). Threads that
    compete with other busy processes stall the whole team at each barrier, so cores that
    other processes keep busy are left to them.
    """
    if cpu is None:
        import psutil

        cpu = CpuInfo(None, psutil.cpu_count(logical=False), psutil.cpu_count(), usable_cpus=usable_cpus())
    cores = cpu.performance_cores or cpu.physical_cores or cpu.usable_cpus or 1
    if cpu.usable_cpus:
        cores = min(cores, cpu.usable_cpus)
    busy = int(busy_elsewhere + 0.25)  # a core counts as taken once it is 75% busy
    if busy and cpu.logical_cores:
        cores = min(cores, max(1, cpu.logical_cores - busy))
    return max(1, cores)


class CpuLoadSampler:
    """How many cores other processes kept busy between start and now.

    Started before a model loads and read when its threads are chosen, so the sample window
    costs nothing; our own CPU time in the window is subtracted.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        times = self._psutil.cpu_times()
        own = os.times()
        return time.monotonic(), times.user + times.nice + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0), own.user + own.system

    def busy_elsewhere(self) -> float:
        (t0, busy0, own0), (t1, busy1, own1) = self._start, self._read()
        if t1 - t0 < 0.02:  # too short to say anything
            return 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))

    def lap(self) -> float:
        """busy_elsewhere(), then start a new window from now (a governor reading it repeatedly)."""
        busy = self.busy_elsewhere()
        self._start = self._read()
        return busy


# --- memory ------------------------------------------------------------------------------------


def read_cgroup_limit(cgroup_root: Path) -> tuple[int | None, int | None]:
    """(limit, usage) in bytes of this process's memory cgroup (v2, else v1); None when unlimited."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            raw = (cgroup_root / limit_file).read_text().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= CGROUP_UNLIMITED:
            return None, None
        try:
            usage = int((cgroup_root / usage_file).read_text().strip())
        except (OSError, ValueError):
            usage = None
        return int(raw), usage
    return None, None


def read_memory(total: int, available: int, swap_total: int, swap_free: int, cgroup: tuple[int | None, int | None]) -> MemoryInfo:
    limit, usage = cgroup
    if limit is not None and limit < total:
        free_in_cgroup = limit - (usage or 0)
        return MemoryInfo(limit, max(0, min(available, free_in_cgroup)), swap_total, swap_free, limit)
    return MemoryInfo(total, available, swap_total, swap_free)


# --- GPUs --------------------------------------------------------------------------------------


def read_nvidia(nvml: Any) -> tuple[list[GpuInfo], list[str]]:
    """Every NVIDIA GPU through NVML (the `pynvml` module of nvidia-ml-py, or a replay of it)."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no library, no permission: all mean "no NVIDIA GPU we can see"
        name = type(exc).__name__
        if "LibraryNotFound" in name or "DriverNotLoaded" in name:
            return [], []
        return [], [f"NVIDIA GPUs could not be read: {exc}"]
    gpus, notes = [], []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
            except Exception as exc:
                notes.append(f"NVIDIA GPU {index} could not be read: {exc}")
                continue
            total = free = None
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                total, free = int(memory.total), int(memory.free)
            except Exception as exc:
                notes.append(f"memory of NVIDIA GPU {index} unknown: {exc}")
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except Exception:
                capability = None
            gpus.append(GpuInfo(index, "nvidia", name, total, free, capability, driver))
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, notes


def read_drm(sysfs: Path, first_index: int = 0) -> list[GpuInfo]:
    """AMD and Intel GPUs from Linux's DRM sysfs (amdgpu reports VRAM; Intel iGPUs share RAM)."""
    gpus = []
    cards = sorted(p for p in (sysfs / "class" / "drm").glob("card[0-9]*") if p.name[4:].isdigit())
    for card in cards:
        device = card / "device"
        vendor = _read(device / "vendor")
        if vendor == "0x1002":
            total = _read_int(device / "mem_info_vram_total")
            used = _read_int(device / "mem_info_vram_used")
            name = _read(device / "product_name") or f"AMD GPU {_read(device / 'device') or ''}".strip()
            # APUs expose a small carve-out as "VRAM"; their real pool is system RAM.
            unified = total is not None and total <= 2**30
            gpus.append(GpuInfo(first_index + len(gpus), "amd", name, total, None if total is None or used is None else total - used, unified=unified))
        elif vendor == "0x8086":
            name = _read(device / "product_name") or f"Intel GPU {_read(device / 'device') or ''}".strip()
            gpus.append(GpuInfo(first_index + len(gpus), "intel", name, None, None, unified=True))
    return gpus


def read_apple_gpu(sysctl: dict[str, str], working_set: int | None) -> GpuInfo | None:
    """Apple Silicon's GPU: unified memory, of which Metal may use its recommended working set."""
    if sysctl.get("hw.optional.arm64") != "1":
        return None
    total = int(sysctl["hw.memsize"]) if sysctl.get("hw.memsize", "").isdigit() else None
    wired_limit_mb = sysctl.get("iogpu.wired_limit_mb", "0")
    if wired_limit_mb.isdigit() and int(wired_limit_mb) > 0:
        usable = int(wired_limit_mb) * 2**20  # the user raised or lowered Metal's share
    else:
        usable = working_set  # what llama.cpp's Metal backend reports; None if no Metal build
    name = sysctl.get("machdep.cpu.brand_string", "Apple GPU")
    return GpuInfo(0, "apple", name, usable, usable, unified=True) if total else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.isdigit() else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first(values: list[str]) -> str | None:
    return values[0].strip() if values else None


# --- the whole machine ------------------------------------------------------------------------


def _sysctl_values() -> dict[str, str]:
    try:
        out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def detect(build: BuildInfo | None = None) -> HardwareProfile:
    """Read this machine. Never raises for missing devices, libraries or permissions."""
    import psutil

    system = platform.system()
    notes: list[str] = []
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    logical, physical = psutil.cpu_count(), psutil.cpu_count(logical=False)
    gpus: list[GpuInfo] = []
    if system == "Darwin":
        sysctl = _sysctl_values()
        cpu = read_cpu_macos(sysctl)
        memory = read_memory(vm.total, vm.available, swap.total, swap.free, (None, None))
        apple = read_apple_gpu(sysctl, metal_working_set(build))
        gpus += [apple] if apple else []
    else:
        cpu = read_cpu_linux(read_cpuinfo(), Path("/sys"), logical, physical, usable_cpus())
        memory = read_memory(vm.total, vm.available, swap.total, swap.free, read_cgroup_limit(_own_cgroup()))
        try:
            import pynvml
        except ImportError:
            pynvml = None
        if pynvml is not None:
            nvidia, nvml_notes = read_nvidia(pynvml)
            gpus += nvidia
            notes += nvml_notes
        gpus += read_drm(Path("/sys"), first_index=len(gpus))
    return build_profile(system, cpu, memory, gpus, build, notes)


def build_profile(system: str, cpu: CpuInfo, memory: MemoryInfo, gpus: list[GpuInfo], build: BuildInfo | None,
                  notes: list[str]) -> HardwareProfile:
    """Put readings together, noting a GPU the installed llama.cpp build cannot use."""
    notes = list(notes)
    if build is not None and not build.gpu_offload and any(not g.unified or g.vendor == "apple" for g in gpus):
        notes.append(
            "this llama-cpp-python build cannot offload to a GPU, so the GPU above sits idle; "
            "rebuild it with GPU support (see packaging/README.md)"
        )
    return HardwareProfile(system, cpu, memory, tuple(gpus), build, tuple(notes))


def _own_cgroup() -> Path:
    """This process's cgroup v2 folder, or the v1 root."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


def metal_working_set(build: BuildInfo | None) -> int | None:
    """The memory llama.cpp's Metal device may use (its recommended working set), if any."""
    if build is None:
        return None
    return next((d.total for d in build.devices if d.name.startswith(("Metal", "MTL"))), None)
