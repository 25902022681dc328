"""The model-management commands: catalog, pull, list, show, rm, default. Thin, like cli.py."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import click

from ..errors import UsageError
from ..printable import printable
from ..status import slow_work


@cache  # one command, one look at the machine
def _hardware():
    from ..backends import this_machine

    return this_machine()


@click.command("catalog")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def catalog_command(as_json):
    """List the curated models and how each would run here (the recommended quantization and its fit).

    Pull one with `localllm pull NAME[:SIZE][-QUANT]`, e.g. `localllm pull qwen3:4b`.
    """
    from ..store import catalog_choices, recommend

    choices = catalog_choices(_hardware())
    best = recommend(choices)
    rows = [{"ref": c.entry.ref, "family": c.entry.family, "params_b": c.entry.params_b, "license": c.entry.license,
             "quant": c.quant, "size": c.size, "fit": c.plan.fit, "label": c.plan.label, "recommended": c is best,
             "quants": [q.quant for q in c.entry.quants], "repo": c.entry.gguf_repo, "vision": c.entry.vision}
            for c in choices]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["ref"]) for r in rows + [{"ref": "NAME"}])
    click.echo(f"  {'NAME':<{width}}  {'QUANT':<7} {'SIZE':>9}  {'FIT HERE':<16} FAMILY (LICENSE)")
    for r in rows:
        mark = "*" if r["recommended"] else " "
        sees = ", sees images" if r["vision"] else ""
        click.echo(printable(f"{mark} {r['ref']:<{width}}  {r['quant']:<7} {r['size'] / 1e9:6.1f} GB  {r['label']:<16} "
                             f"{r['family']} ({r['license']}{sees})"))
    click.echo("\n* recommended for this machine", err=True)


@click.command()
@click.argument("ref")
@click.option("--full", is_flag=True, help="The full-precision safetensors checkpoint (for the transformers engine) instead of a GGUF.")
@click.option("--to", "to_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also copy the verified files and a manifest into DIR, for `localllm add DIR` on a machine without a network.")
def pull(ref, full, to_dir):
    """Download a model: a catalog name (qwen3, qwen3:8b, qwen3:8b-q4_k_m), hf.co/owner/repo[:QUANT], or owner/repo/file.gguf.

    Without a quantization, the one that fits this machine best is chosen. A repo with no GGUF
    but a safetensors checkpoint (e.g. Qwen/Qwen3-8B), or --full, fetches the checkpoint: config,
    tokenizer and every shard. The download goes into the Hugging Face cache, resumes if
    interrupted (run the same command again) and is checked against the Hub's checksums before it
    can be used. Prints the installed file's (or checkpoint folder's) path on stdout.
    """
    from huggingface_hub import constants

    from ..store import prepare_pull
    from ..store import pull as pull_files

    if constants.HF_HUB_OFFLINE:
        from ..errors import DownloadError, ModelNotFoundError
        from ..registry import find_installed

        try:
            installed = find_installed(ref)
        except ModelNotFoundError:
            raise DownloadError(f"cannot download {ref}: downloads are off (HF_HUB_OFFLINE is set; unset it to download)") from None
        click.echo(f"{ref}: already installed (offline, so not checked against the Hub)", err=True)
        _export(installed, to_dir)
        click.echo(str(installed.path))
        return
    with slow_work(f"asking the Hub about {printable(ref)}"):
        prepared = prepare_pull(ref, _hardware(), full=full)
    names = ", ".join(f.filename for f in prepared.files)
    if len(prepared.files) > 6:
        names = f"{len(prepared.files)} files"
    click.echo(printable(f"{ref}: {prepared.ref.repo_id} {names} ({prepared.size / 1e9:.2f} GB)"), err=True)
    if prepared.plan is None:
        click.echo(f"  safetensors: {prepared.reason}; runs on the transformers engine (localllm[full])", err=True)
    else:
        click.echo(f"  {prepared.quant or 'unknown quantization'}: {prepared.reason}; here: {prepared.plan.label}", err=True)
        if prepared.plan.fit == "none":
            click.echo(f"localllm: warning: {prepared.plan.explanation}", err=True)
    if not prepared.missing:
        click.echo("  already installed", err=True)
    try:
        with _ProgressBar(prepared) as bar:
            path = pull_files(prepared, bar.update)
    except KeyboardInterrupt:
        click.echo("\nlocalllm: download interrupted; what arrived is kept: run the same command to resume", err=True)
        raise
    click.echo(f"  verified and installed: {path}", err=True)
    if to_dir is not None:
        _export(_installed_at(path), to_dir)
    click.echo(str(path))


def _installed_at(path: Path):
    from ..registry import installed_models

    return next(m for m in installed_models() if m.path.absolute() == path.absolute())


def _export(model, to_dir: Path | None) -> None:
    if to_dir is None:
        return
    from ..transfer import export

    with slow_work(f"copying {printable(model.name)} to {to_dir}"):
        folder = export(model, to_dir)
    click.echo(printable(f"  copied with its manifest to {folder}; on the other machine: localllm add {folder}"), err=True)


class _ProgressBar:
    """tqdm on stderr (size, speed, ETA) when a person is watching; bytes already on disk start it off."""

    def __init__(self, prepared):
        self.prepared, self.bar = prepared, None

    def __enter__(self):
        from tqdm.auto import tqdm

        total, missing = self.prepared.size, self.prepared.to_download
        if missing and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=total - missing, unit="B", unit_scale=True, unit_divisor=1024,
                            file=sys.stderr, desc="  downloading", mininterval=0.2, dynamic_ncols=True)
        return self

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--add-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also list (and run in place) the GGUF files in DIR, from now on.")
@click.option("--remove-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Stop listing a folder added with --add-dir (its files are not touched).")
def list_models(as_json, add_dir, remove_dir):
    """List the models on this machine: pulled ones, the starter, and GGUFs other tools downloaded.

    Found without copying: the Hugging Face cache, LM Studio's and llama.cpp's folders, and
    folders added with --add-dir. The fit label says how each would run here.
    """
    from ..registry import (
        STARTER_INSTALL_HINT,
        add_model_dir,
        installed_models,
        remove_model_dir,
    )

    if add_dir is not None:
        click.echo(f"added {add_model_dir(add_dir)}", err=True)
    if remove_dir is not None:
        click.echo(f"no longer listing {remove_model_dir(remove_dir)}", err=True)
    models = installed_models()
    rows = []
    for m in models:
        fit = _fit(m.path) if m.format == "gguf" else {"fit": "full", "label": "transformers"}
        file_type = fit.pop("file_type", None)  # the metadata names the quantization when the file name does not
        rows.append({"name": m.name, "path": str(m.path), "size": m.size, "format": m.format,
                     "quant": m.quant or file_type, "source": m.source, "vision": m.projector is not None,
                     "projector": str(m.projector) if m.projector else None, **fit})
    for r in rows:
        if r["fit"] == "error":  # listed, so it can be found and removed, but said once
            click.echo(printable(f"localllm: warning: {r['path']} cannot be used: {r['error']}"), err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No models installed; {STARTER_INSTALL_HINT}, or pull one: localllm catalog", err=True)
        return
    width = max(len(r["name"]) for r in rows + [{"name": "NAME"}])
    click.echo(f"{'NAME':<{width}}  {'SIZE':>9}  {'FORMAT':<11} {'QUANT':<7} {'FIT HERE':<16} {'SOURCE':<9} PATH")
    for r in rows:
        kind = f"{r['format']}+vision" if r["vision"] else r["format"]
        click.echo(printable(f"{r['name']:<{width}}  {r['size'] / 1e9:6.2f} GB  {kind:<11} {r['quant'] or '?':<7} "
                             f"{r['label']:<16} {r['source']:<9} {r['path']}"))


def _fit(path: Path) -> dict:
    from ..backends.llamacpp.planner import plan
    from ..errors import LocalLLMError
    from ..model import inspect

    try:
        spec = inspect(path)
        chosen = plan(_hardware(), spec)
    except LocalLLMError as exc:  # a broken file is listed, with why it will not run
        return {"fit": "error", "label": "unreadable", "error": str(exc)}
    return {"fit": chosen.fit, "label": chosen.label, "file_type": spec.file_type}


def _vision(projector: Path, n_ctx: int) -> dict:
    """What `show` says of a vision model's projector."""
    from ..projector import read

    facts = read(projector)
    return {"projector": str(projector), "kind": facts.kind, "image_size": facts.image_size,
            "tokens_per_image": facts.tokens_per_image, "images_in_context": facts.images_fitting(n_ctx),
            "bytes": facts.weight_bytes + facts.compute_bytes}


def spec_for(ref: str, hw, remote: bool = False):
    """(spec, plan, plans of each quantization, facts) for a model, installed or not: an installed
    file is read; a catalog entry is planned from the catalog, offline, choosing the quantization
    that fits unless one is named; anything else (or with `remote`) from its header on the Hub."""
    from ..backends.llamacpp.planner import plan
    from ..catalog import load_catalog
    from ..errors import ModelNotFoundError
    from ..model import inspect
    from ..references import parse_reference
    from ..registry import find_installed
    from ..store import entry_plans

    info: dict = {"ref": ref}
    try:
        installed = find_installed(ref)
    except ModelNotFoundError:
        parsed = parse_reference(ref, load_catalog())
        if parsed.kind in ("path", "name"):
            raise
        installed = None
    if installed is not None:
        spec = inspect(installed.path)
        chosen, plans = plan(hw, spec), []
        info |= {"installed": True, "path": str(installed.path), "source": installed.source, "size": installed.size}
        if installed.projector is not None:
            info["vision"] = _vision(installed.projector, chosen.shape.n_ctx)
    elif parsed.entry is not None and not remote:
        entry = parsed.entry
        chosen, plans = entry_plans(entry, hw, parsed.quant)
        spec = chosen.spec
        info |= {"installed": False, "family": entry.family, "license": entry.license, "params_b": entry.params_b,
                 "repo": entry.gguf_repo, "safetensors_repo": entry.safetensors_repo, "unverified": list(entry.unverified),
                 "sees_images": entry.vision, "projector_bytes": entry.projector_bytes,
                 "description": entry.description}
    else:
        from ..gguf_info import inspect_remote
        from ..store import prepare_pull

        with slow_work(f"reading the header of {printable(ref)} from the Hub"):
            prepared = prepare_pull(ref, hw)
            spec = inspect_remote(prepared.ref.repo_id, prepared.files[0].filename, prepared.ref.revision)
        chosen, plans = plan(hw, spec), []
        info |= {"installed": False, "repo": prepared.ref.repo_id, "files": [f.filename for f in prepared.files],
                 "size": prepared.size}
    return spec, chosen, plans, info


@click.command()
@click.argument("ref")
@click.option("--remote", is_flag=True, help="For a model not installed: read its real header from the Hub (a few MB).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def show(ref, remote, as_json):
    """Show a model: what it is, where it is, and how it would load on this machine.

    Works offline for installed models and catalog entries.
    """
    from dataclasses import asdict

    hw = _hardware()
    spec, chosen, plans, info = spec_for(ref, hw, remote)
    info |= {"architecture": spec.architecture, "layers": spec.n_layer, "context_length": spec.n_ctx_train,
             "quant": spec.file_type, "sliding_window": spec.sliding_window, "experts": spec.n_expert,
             "fit": chosen.fit, "label": chosen.label, "settings": asdict(chosen.shape),
             "explanation": chosen.explanation,
             "quants": [{"quant": p.spec.file_type, "size": p.spec.total_bytes, "fit": p.fit, "label": p.label} for p in plans]}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key in ("ref", "family", "description", "license", "params_b", "repo", "path", "source", "architecture",
                "layers", "context_length", "sliding_window", "experts", "quant"):
        if info.get(key) not in (None, 0, ""):
            click.echo(f"{key.replace('_', ' '):<15} {printable(info[key])}")
    vision = info.get("vision")
    if vision:
        per_image = (f"{vision['tokens_per_image']} tokens per image, {vision['images_in_context']} images fit the "
                     f"{chosen.shape.n_ctx}-token context" if vision["tokens_per_image"] else "tokens per image vary with its size")
        click.echo(printable(f"{'vision':<15} {Path(vision['projector']).name} ({vision['kind']}, "
                             f"{vision['bytes'] / 2**20:.0f} MiB with its encoder's buffer); {per_image}"))
    elif info.get("sees_images"):
        loaded = f": about {info['projector_bytes'] / 2**20:.0f} MiB loaded, planned beside it" if info["projector_bytes"] else ""
        click.echo(f"{'vision':<15} sees images; its projector (mmproj) comes with it{loaded}")
    if info.get("unverified"):
        click.echo(printable(f"{'unverified':<15} {', '.join(info['unverified'])} (from the model card, not checked against the Hub)"))
    click.echo(f"\n{chosen.label}: {printable(chosen.explanation)}")
    for p in info["quants"]:
        click.echo(printable(f"  {p['quant']:<7} {p['size'] / 1e9:6.2f} GB  {p['label']}"))
    if not info["installed"]:
        click.echo(printable(f"\nnot installed: localllm pull {ref}"))


@click.command()
@click.argument("ref")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def rm(ref, yes):
    """Delete a pulled model from the Hugging Face cache, freeing its disk space (a model registered
    with `localllm add` is forgotten; its file stays)."""
    from ..registry import check_removable, find_installed, remove

    model = find_installed(ref)
    check_removable(model)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not deleting {model.name} without confirmation: add --yes")
        question = (f"Forget {model.name} (the file {model.path} stays)?" if model.source == "added" else
                    f"Delete {model.name} ({model.size / 1e9:.2f} GB, {model.path})?")
        if not click.confirm(question, default=False, err=True):
            click.echo("nothing removed", err=True)
            return
    freed = remove(model)
    if model.source == "added":
        click.echo(f"forgot {model.name}; {model.path} is untouched", err=True)
        return
    click.echo(f"deleted {model.name}: {freed / 1e9:.2f} GB freed", err=True)


@click.command()
@click.argument("model", required=False)
@click.option("--clear", is_flag=True, help="Forget the default; the best installed model is used.")
def default(model, clear):
    """Show or set the model used when -m is not given."""
    from ..config import load_config, save_config
    from ..registry import resolve

    config = load_config()
    if clear:
        config.pop("default_model", None)
        save_config(config)
        return
    if model is None:
        click.echo(config.get("default_model", "(none: the best installed model is used)"))
        return
    resolve(model)  # refuse to remember a model that does not resolve
    config["default_model"] = model
    save_config(config)
    click.echo(f"default model: {model}", err=True)


COMMANDS = (catalog_command, pull, list_models, show, rm, default)
