"""Choose how to load a model on this machine: GPU layers, context, KV cache type, threads.

plan() takes a HardwareProfile and a ModelSpec (plan_quants() several quantizations of one
model) and returns a LoadPlan: the settings, a fit label, the memory breakdown and a readable
explanation. User overrides always win; the planner warns instead of refusing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...gguf_info import ModelSpec
from ...gguf_names import QUANT_ORDER
from ...hardware import HardwareProfile, default_threads
from ...options import DEFAULT_CTX, LoadOptions
from .estimate import MIB, LoadShape, MemoryEstimate, estimate

FIT_LABELS = {"gpu": "fits on GPU", "partial": "partial offload", "cpu": "CPU only", "none": "does not fit"}
FIT_RANK = {"gpu": 0, "partial": 1, "cpu": 2, "none": 3}
MIN_CTX = 512
# On a CPU a bigger quant is proportionally slower; past Q5_K_M the quality gain is small.
CPU_BEST_QUANT = "Q5_K_M"


def safety_margin(total: int) -> int:
    """Memory kept free on top of an estimate: 5%, at least 128 MiB."""
    return max(128 * MIB, total // 20)


@dataclass(frozen=True)
class Overrides:
    """What the user fixed; None leaves the choice to the planner."""

    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    kv_type: str | None = None
    flash_attn: bool | None = None
    tensor_split: tuple[float, ...] | None = None
    n_threads: int | None = None
    margin: int | None = None  # bytes kept free per device
    load_anyway: bool = False
    n_seq: int = 1
    grow: bool = False  # the KV cache starts small and grows: the window may be all the model was trained on
    outputs: int = 1  # rows of logits a decode returns (localllm.generation.speculation.output_rows)
    # Bytes per device (RAM, then each GPU) already taken by a model loaded beside this one (the
    # target of a draft model): not free for this one.
    reserved: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoadPlan:
    spec: ModelSpec
    fit: str
    shape: LoadShape
    n_threads: int
    estimate: MemoryEstimate
    margins: tuple[int, ...]  # per device, as in estimate.devices
    budgets: tuple[int | None, ...]  # free memory per device
    explanation: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return FIT_LABELS[self.fit]

    @property
    def taken(self) -> tuple[int, ...]:
        """Bytes per device this load takes with its margins: Overrides.reserved for a model beside it."""
        return tuple(device.total + margin for device, margin in zip(self.estimate.devices, self.margins))

    def load_options(self, verbose: bool = False) -> LoadOptions:
        return LoadOptions(
            n_ctx=self.shape.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.shape.n_gpu_layers,
            flash_attn=self.shape.flash_attn,
            kv_type=self.shape.kv_type,
            swa_full=self.shape.swa_full,
            tensor_split=self.shape.tensor_split,
            n_seq=self.shape.n_seq,
            verbose=verbose,
        )


def _budgets(hw: HardwareProfile) -> tuple[int | None, ...]:
    return (hw.memory.available,) + tuple(g.free for g in hw.offload_gpus)


def _fits(est: MemoryEstimate, budgets: tuple[int | None, ...], margins: tuple[int, ...]) -> bool:
    return all(budget is None or device.total + margin <= budget or device.total == 0
               for device, budget, margin in zip(est.devices, budgets, margins))


def _margins(est: MemoryEstimate, override: int | None) -> tuple[int, ...]:
    return tuple(override if override is not None else safety_margin(d.total) for d in est.devices)


def plan(hw: HardwareProfile, spec: ModelSpec, overrides: Overrides = Overrides(), busy_elsewhere: float = 0.0) -> LoadPlan:
    gpus = hw.offload_gpus
    vendors = tuple(g.vendor for g in gpus)
    budgets = tuple(None if free is None else max(0, free - taken)
                    for free, taken in zip(_budgets(hw), overrides.reserved + (0,) * len(_budgets(hw))))
    target_ctx = overrides.n_ctx or default_ctx(spec.n_ctx_train, overrides.grow)
    flash = True if overrides.flash_attn is None else overrides.flash_attn
    split = overrides.tensor_split if overrides.tensor_split is not None else _split_by_free(gpus)
    all_layers = spec.n_layer + 1  # the output head counts as one more layer to offload
    amx = hw.build is not None and hw.build.amx is not None and hw.build.amx.in_use

    def shape(n_ctx: int, kv: str, layers: int) -> LoadShape:
        return LoadShape(n_ctx=n_ctx, kv_type=kv, flash_attn=flash, n_gpu_layers=layers, tensor_split=split, amx=amx,
                         n_seq=overrides.n_seq, outputs=overrides.outputs)

    def evaluate(s: LoadShape) -> tuple[MemoryEstimate, tuple[int, ...], bool]:
        est = estimate(spec, s, vendors)
        margins = _margins(est, overrides.margin)
        return est, margins, _fits(est, budgets, margins)

    # Try the wanted context first, then shorter ones; at each, an f16 KV cache, and a q8_0
    # one only if it puts more layers on the GPU; for each, the most GPU layers that fit.
    # Whatever the user fixed is never varied.
    contexts = [target_ctx] if overrides.n_ctx else _halvings(target_ctx)
    kv_types = [overrides.kv_type] if overrides.kv_type else (["f16", "q8_0"] if flash else ["f16"])
    layer_counts = [overrides.n_gpu_layers] if overrides.n_gpu_layers is not None else (
        list(range(all_layers, -1, -1)) if gpus else [0])
    chosen = None
    for n_ctx in contexts:
        for kv in kv_types:
            for layers in layer_counts:
                candidate = shape(n_ctx, kv, layers)
                est, margins, ok = evaluate(candidate)
                if ok:
                    if chosen is None or layers > chosen[0].n_gpu_layers:
                        chosen = (candidate, est, margins)
                    break
            if chosen and (chosen[0].n_gpu_layers >= all_layers or not gpus):
                break
        if chosen:
            break

    warnings = []
    if chosen is None:
        fallback = shape(contexts[-1], kv_types[-1], layer_counts[-1])
        est, margins, _ = evaluate(fallback)
        fit = "none"
        chosen = (fallback, est, margins)
        warnings.append(
            f"needs {human_bytes(est.ram.total + margins[0])} of RAM but {human_bytes(budgets[0])} is available"
            + ("; loading anyway as asked" if overrides.load_anyway else "; use --load-anyway to try regardless")
        )
    else:
        layers = chosen[0].n_gpu_layers
        fit = "cpu" if not gpus or layers == 0 else ("gpu" if layers >= all_layers else "partial")
    s, est, margins = chosen
    wanted = target_ctx if overrides.n_ctx else default_ctx(spec.n_ctx_train, grow=False)
    if s.n_ctx < wanted:  # a window the user asked for, or less than the usual default
        warnings.append(f"context shortened from {wanted} to {s.n_ctx} tokens to fit in memory")
    threads = overrides.n_threads or default_threads(hw.cpu, busy_elsewhere)
    explanation = _explain(hw, spec, s, est, margins, budgets, fit, threads)
    return LoadPlan(spec, fit, s, threads, est, margins, budgets, explanation, tuple(warnings) + hw.notes)


def default_ctx(n_ctx_train: int, grow: bool) -> int:
    """The window asked for when the user names none: the trained length where the KV cache grows
    as it fills (a long piped document then just works, and memory is taken only as it is used),
    else at most DEFAULT_CTX, which a cache allocated whole pays for up front. The planner halves
    either until it fits."""
    trained = n_ctx_train or DEFAULT_CTX
    return trained if grow else min(trained, DEFAULT_CTX)


def _halvings(n_ctx: int) -> list[int]:
    steps = [n_ctx]
    while steps[-1] // 2 >= MIN_CTX:
        steps.append(steps[-1] // 2)
    return steps


def _split_by_free(gpus) -> tuple[float, ...]:
    """llama.cpp's own default: layers in proportion to each GPU's free memory."""
    if len(gpus) < 2:
        return ()
    return tuple(float(g.free or g.total or 0) for g in gpus)


def plan_quants(hw: HardwareProfile, specs: list[ModelSpec], overrides: Overrides = Overrides(), busy_elsewhere: float = 0.0) -> tuple[LoadPlan, list[LoadPlan]]:
    """Plan every quantization of a model; return the recommended plan and all of them.

    Best fit first (on GPU, then partial, then CPU); within it the best quality, except that
    where layers run on the CPU, quants above Q5_K_M cost more speed than they give quality.
    If none fits, the smallest.
    """
    plans = [plan(hw, spec, overrides, busy_elsewhere) for spec in specs]

    def quality(p: LoadPlan) -> int:
        name = (p.spec.file_type or "").upper()
        rank = QUANT_ORDER.index(name) if name in QUANT_ORDER else len(QUANT_ORDER)
        if p.fit in ("cpu", "partial") and rank < QUANT_ORDER.index(CPU_BEST_QUANT):
            rank = QUANT_ORDER.index(CPU_BEST_QUANT) + (QUANT_ORDER.index(CPU_BEST_QUANT) - rank)
        return rank

    # When nothing fits, the smallest comes closest (and is what --load-anyway should try).
    best = min(plans, key=lambda p: (FIT_RANK[p.fit], p.spec.total_bytes if p.fit == "none" else quality(p)))
    return best, plans


def human_bytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / MIB:.0f} MiB"


def _explain(hw, spec, s, est, margins, budgets, fit, threads) -> str:
    name = f"{spec.name} ({spec.file_type or 'unknown quant'}, {human_bytes(spec.weights_bytes)} of weights)"
    gpus = hw.offload_gpus
    if fit == "gpu":
        where = f"runs entirely on {_gpu_names(gpus)}"
    elif fit == "partial":
        where = f"puts {s.n_gpu_layers} of {spec.n_layer + 1} layers on {_gpu_names(gpus)} and the rest on the CPU with {_count(threads, 'thread')}"
    elif fit == "cpu":
        reason = "there is no GPU it can use" if not gpus else "not even one layer fits in the GPU's free memory"
        if hw.gpus and not gpus and hw.build is not None and not hw.build.gpu_offload:
            reason = "this llama-cpp-python build cannot offload to the GPU"
        where = f"runs on the CPU with {_count(threads, 'thread')}, since {reason}"
    else:
        where = "does not fit in this machine's free memory"
    kv_total = sum(d.kv_cache for d in est.devices)
    parts = [f"{name} {where}.",
             f"A {s.n_ctx}-token context with a{'n' if s.kv_type == 'f16' else ''} {s.kv_type} KV cache takes {human_bytes(kv_total)}"
             + (" (sliding-window layers keep only their window)" if any(spec.swa_layers) and not s.swa_full else "") + "."]
    for device, margin, budget in zip(est.devices, margins, budgets):
        if device.total:
            where = "RAM" if device.device == "cpu" else device.device.upper()
            parts.append(f"{where}: {human_bytes(device.total)} needed + {human_bytes(margin)} margin, {human_bytes(budget)} free.")
    return " ".join(parts)


def _gpu_names(gpus) -> str:
    names = sorted({g.name for g in gpus})
    return f"{len(gpus)} x {names[0]}" if len(names) == 1 and len(gpus) > 1 else " and ".join(names)


def breakdown_rows(p: LoadPlan) -> list[tuple[str, ...]]:
    """A table of the estimate: one row per kind of memory, one column per device."""
    heads = ("", *("RAM" if d.device == "cpu" else d.device.upper() for d in p.estimate.devices))
    rows = [heads]
    for label, attr in (("weights", "weights"), ("KV cache", "kv_cache"), ("compute buffer", "compute"),
                        ("CPU scratch", "scratch"), ("output", "output"), ("runtime overhead", "overhead")):
        rows.append((label, *(human_bytes(getattr(d, attr)) for d in p.estimate.devices)))
    rows.append(("safety margin", *(human_bytes(m) for m in p.margins)))
    rows.append(("total", *(human_bytes(d.total + m) for d, m in zip(p.estimate.devices, p.margins))))
    rows.append(("free now", *(human_bytes(b) for b in p.budgets)))
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
