"""`localllm hw` and `localllm plan`: what this machine has, and how a model would load on it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from .options import option
from .rpc import rpc_option

CACHED_CHAT_TOKENS = 4096  # the chat whose saved prompt state `plan` prices


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def hw(as_json):
    """Show what this machine has: CPU, memory, GPUs, and what llama.cpp can use."""
    from dataclasses import asdict

    from ..backends import this_machine

    profile = this_machine()
    if as_json:
        click.echo(json.dumps(asdict(profile), indent=2))
        return
    click.echo(_hw_text(profile))


def _hw_text(profile) -> str:
    from ..backends.llamacpp.planner import human_bytes

    cpu, mem = profile.cpu, profile.memory
    cores = f"{cpu.physical_cores or '?'} cores, {cpu.logical_cores or '?'} threads"
    if cpu.performance_cores is not None:
        cores += f" ({cpu.performance_cores} performance + {cpu.efficiency_cores} efficiency)"
    lines = [
        f"CPU     {cpu.model or 'unknown'}: {cores}; {', '.join(cpu.features) or 'no SIMD features detected'}",
        f"RAM     {human_bytes(mem.available)} available of {human_bytes(mem.total)}"
        + (f" (container limit {human_bytes(mem.cgroup_limit)})" if mem.cgroup_limit else "")
        + (f"; swap {human_bytes(mem.swap_total)}" if mem.swap_total else "; no swap"),
    ]
    for gpu in profile.gpus:
        memory = "memory unknown" if gpu.total is None else f"{human_bytes(gpu.free)} free of {human_bytes(gpu.total)}"
        extra = "".join(f", {k} {v}" for k, v in (("compute", gpu.compute_capability), ("driver", gpu.driver)) if v)
        lines.append(f"GPU {gpu.index}   {gpu.name}: {memory}{' (shared with the CPU)' if gpu.unified else ''}{extra}")
    if not profile.gpus:
        lines.append("GPU     none found")
    if profile.build is not None:
        devices = ", ".join(d.name for d in profile.build.devices) or "none"
        lines.append(f"llama.cpp  GPU offload {'yes' if profile.build.gpu_offload else 'no'}; devices: {devices}")
        amx = profile.build.amx
        if amx is not None and (amx.present or amx.in_build):
            lines.append(f"AMX     {amx.describe()}")
    lines += [f"note: {note}" for note in profile.notes]
    return "\n".join(lines)


@click.command("plan")
@click.argument("model", required=False)
@option("n_ctx", help="Context window to plan for; 0 for the model's trained length.", shown_default="the trained length, at most 4096")
@option("n_gpu_layers", help="Fix the number of GPU layers: -1 all, 0 none.")
@option("kv_type", help="Fix the KV cache type.")
@click.option("--margin", type=click.IntRange(min=0), metavar="MIB", help="Memory to keep free per device, in MiB.  [default: 5%, at least 128]")
@click.option("--full", is_flag=True, help="Plan the full-precision safetensors checkpoint (a catalog entry's safetensors_repo, or owner/repo on the Hub).")
@rpc_option
@click.option("--draft", metavar="MODEL", help="Also plan this draft model (speculation) in the memory MODEL leaves.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def plan_command(model, ctx, gpu_layers, kv_type, margin, full, rpc, draft, as_json):
    """Show how MODEL would be loaded here, and why: fit, settings, memory per device.

    MODEL may be installed, a catalog name (planned offline from the catalog, with the
    quantization that fits best unless one is named) or a Hub reference (its header is read).
    A safetensors checkpoint (a folder, an installed one, or --full before any download: its
    config and headers are read by HTTP range) is planned for the transformers engine, per GPU.
    """
    from ..backends import this_machine
    from ..backends.llamacpp.estimate import saved_state_bytes
    from ..backends.llamacpp.planner import Overrides, breakdown_rows, human_bytes, plan
    from ..generation.speculation import output_rows
    from ..options import LoadOptions
    from ..printable import printable
    from ..registry import resolve
    from .models import spec_for

    if rpc:
        from ..backends.llamacpp import rpc as rpc_workers

        rpc_workers.connect(rpc)
    profile = this_machine()
    if full or (model is not None and _installed_checkpoint(model)):
        _plan_checkpoint(model, profile, ctx, margin, full, as_json)
        return
    # A model that is not installed is planned before any download: that is what plan is for.
    spec, _, _, info = spec_for(model or str(resolve(None)), profile)
    vision = info.get("vision")  # an installed vision model: its projector's memory is taken first
    projector = vision["bytes"] if vision else info.get("projector_bytes", 0)  # a catalog entry's, from the catalog
    # The option table's special values, as a load reads them: 0 the trained length, -1 every layer.
    ctx = spec.n_ctx_train or None if ctx == 0 else ctx
    gpu_layers = spec.n_layer + 1 if gpu_layers == -1 else gpu_layers
    overrides = Overrides(n_ctx=ctx, n_gpu_layers=gpu_layers, kv_type=kv_type,
                          margin=None if margin is None else margin * 2**20, outputs=output_rows(LoadOptions()),
                          reserved=(projector,))
    # Threads as a quiet machine would start with: a sample of the other processes' load over the
    # moment `plan` runs flipped between 1 and 2 on back-to-back calls, and a load adapts while
    # decoding anyway (backends/threads.py).
    chosen = plan(profile, spec, overrides)
    beside = _plan_draft(draft, profile, chosen, overrides) if draft else None
    chat_tokens = min(CACHED_CHAT_TOKENS, chosen.shape.n_ctx)
    on_disk = saved_state_bytes(spec, chosen.shape, chat_tokens)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({"model": spec.name, "fit": chosen.fit, "label": chosen.label,
                               "settings": asdict(chosen.shape) | {"n_threads": chosen.n_threads},
                               "estimate": [asdict(d) | {"total": d.total} for d in chosen.estimate.devices],
                               "margins": chosen.margins, "free": chosen.budgets,
                               "explanation": chosen.explanation, "warnings": chosen.warnings,
                               "prompt_state": {"tokens": chat_tokens, "bytes": on_disk}, "vision": vision,
                               "projector_bytes": projector,
                               **({"draft": {"model": beside.spec.name, "fit": beside.fit, "settings": asdict(beside.shape),
                                             "estimate": [asdict(d) | {"total": d.total} for d in beside.estimate.devices],
                                             "warnings": beside.warnings}} if beside else {})}, indent=2))
        return
    click.echo(f"{printable(spec.name)}: {chosen.label}")
    click.echo(printable(chosen.explanation))
    rows = breakdown_rows(chosen)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo()
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    shape = chosen.shape
    click.echo(f"\nsettings: --ctx {shape.n_ctx} --gpu-layers {shape.n_gpu_layers} --kv-type {shape.kv_type} --threads {chosen.n_threads}")
    click.echo(f"prompt cache: a {chat_tokens:,}-token chat kept on disk takes {human_bytes(on_disk)} "
               f"({on_disk / chat_tokens / 1024:.0f} KiB a token; `localllm cache` shows and clears them)")
    if vision:
        fit = vision["tokens_per_image"] and (shape.n_ctx // vision["tokens_per_image"])
        click.echo(printable(f"vision: {Path(vision['projector']).name} takes {human_bytes(vision['bytes'])} beside it (RAM); "
                             + (f"an image is {vision['tokens_per_image']} tokens, {fit} fit the window"
                                if fit else "an image's tokens depend on its size")))
    elif projector:
        click.echo(f"vision: its projector takes about {human_bytes(projector)} beside it (RAM), from the catalog")
    if beside is not None:
        used = ", ".join(f"{'RAM' if d.device == 'cpu' else d.device.upper()} {human_bytes(d.total)}"
                         for d in beside.estimate.devices if d.total)
        click.echo(printable(f"draft model {beside.spec.name}: {beside.label} beside it, {beside.shape.n_gpu_layers} GPU "
                             f"layers, a {beside.shape.n_ctx}-token window: {used}"))
    for warning in chosen.warnings + (beside.warnings if beside else ()):
        click.echo(f"warning: {printable(warning)}", err=True)


def _plan_draft(ref: str, profile, target, overrides):
    """The draft model's plan in the memory the target's plan leaves, with the target's window."""
    from dataclasses import replace

    from ..backends.llamacpp.planner import plan
    from .models import spec_for

    layers = 0 if target.shape.n_gpu_layers == 0 else None
    return plan(profile, spec_for(ref, profile)[0], replace(overrides, n_ctx=target.shape.n_ctx, n_gpu_layers=layers,
                                                            kv_type=None, outputs=1, reserved=target.taken))


def _installed_checkpoint(ref: str):
    from ..errors import ModelNotFoundError
    from ..registry import find_installed

    try:
        found = find_installed(ref)
    except (ModelNotFoundError, UsageError):
        return None
    return found.path if found.format == "safetensors" else None


def _plan_checkpoint(ref, profile, ctx, margin, full: bool, as_json: bool) -> None:
    from ..backends.llamacpp.planner import human_bytes
    from ..backends.transformers.checkpoint_plan import place, read_local, read_remote
    from ..backends.transformers.engine import choose_dtype
    from ..catalog import load_catalog
    from ..printable import printable
    from ..references import parse_reference

    if ref is None:
        raise UsageError("plan --full needs a model: a catalog name or owner/repo")
    local = _installed_checkpoint(ref)
    if local is not None:
        spec = read_local(local)
    else:
        parsed = parse_reference(ref, load_catalog())
        repo = parsed.entry.safetensors_repo if parsed.entry is not None else parsed.repo_id
        if repo is None:
            raise UsageError(f"{ref} names no Hub repository to plan")
        spec = read_remote(repo, parsed.revision)
    gpus = [(g.index, g.free, g.vendor) for g in profile.gpus if g.vendor == "nvidia" and g.free]
    dtype = choose_dtype(None, spec.dtype, "cuda" if gpus else "cpu", profile.cpu.features)
    n_ctx = ctx or min(spec.n_ctx_train, 4096)
    placed = place(spec, dtype, n_ctx, gpus, profile.memory.available, None if margin is None else margin * 2**20)
    layers = {device: sum(1 for m, d in placed.device_map.items() if d == device and ".layers." in m)
              for device in [*(g[0] for g in gpus), "cpu"]}
    if as_json:
        click.echo(json.dumps({"model": spec.name, "engine": "transformers", "fit": placed.fit, "dtype": dtype,
                               "n_ctx": n_ctx, "layers": {str(k): v for k, v in layers.items()}, "used": placed.used,
                               "free": placed.free, "warnings": placed.warnings}, indent=2))
        return
    labels = {"gpu": "fits on GPU", "partial": "partial offload", "cpu": "CPU only", "none": "does not fit"}
    click.echo(printable(f"{spec.name}: {labels[placed.fit]} (transformers engine, {dtype}, {n_ctx}-token context)"))
    for device, count in layers.items():
        name = "RAM" if device == "cpu" else f"GPU {device}"
        click.echo(f"  {name:<6} {count:>4} of {spec.n_layer} layers  {human_bytes(placed.used[str(device)]):>10} of "
                   f"{human_bytes(placed.free[str(device)])} usable (weights, KV cache, runtime)")
    for warning in placed.warnings:
        click.echo(f"localllm: warning: {warning}", err=True)
