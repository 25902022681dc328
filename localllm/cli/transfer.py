"""`localllm add` and `localllm verify`: models brought by hand, and installed files re-checked."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..printable import printable
from ..status import slow_work


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", metavar="NAME", help="The name to list and run it by (a single .gguf only).  [default: the file's name]")
@click.option("--mmproj", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="A vision model's projector GGUF, used with it (one beside the model is found without this).")
def add(source, name, mmproj):
    """Install a model brought by hand: a folder written by `localllm pull MODEL --to DIR` (every
    file checked against its manifest, then placed in the Hugging Face cache as if pulled here),
    or a single .gguf file, registered where it lies (its SHA-256 kept for `localllm verify`).
    """
    from ..errors import UsageError
    from ..transfer import add_file, import_folder

    if source.is_dir():
        if name is not None or mmproj is not None:
            option = "--name" if name is not None else "--mmproj"
            raise UsageError(f"{option} is for a single .gguf file; a folder keeps the name in its manifest")
        with slow_work(f"checking the files in {source}"):
            path = import_folder(source)
        click.echo(printable(f"installed {path}"), err=True)
        click.echo(str(path))
        return
    with slow_work(f"hashing {source.name}"):
        entry = add_file(source, name, projector=mmproj)
    vision = f", sees images through {Path(entry['projector']).name}" if entry.get("projector") else ""
    click.echo(printable(f"added {entry['name']} ({entry['size'] / 1e9:.2f} GB{vision}), run in place from {entry['path']}"),
               err=True)


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per file.")
def verify(model, as_json):
    """Re-hash installed model files against the checksums recorded when they arrived: the Hub's
    (pulled models), Ollama's digests, pip's record (the starter), `localllm add`'s. Exit 10 when
    a file changed or went missing. Without MODEL, every installed model.
    """
    from ..registry import find_installed, installed_models
    from ..transfer import IntegrityError
    from ..transfer import verify as verify_files

    models = [find_installed(model)] if model else installed_models()
    with slow_work("hashing model files"):
        checks = verify_files(models)
    if as_json:
        click.echo(json.dumps([{"model": c.model, "path": str(c.path), "status": c.status, "detail": c.detail}
                               for c in checks], indent=2))
    else:
        for c in checks:
            click.echo(printable(f"{c.status:<10} {c.model}  {c.path}" + (f"  ({c.detail})" if c.detail else "")))
    bad = [c for c in checks if c.status in ("changed", "missing")]
    if bad:
        raise IntegrityError(f"{len(bad)} file{'s' if len(bad) > 1 else ''} changed or missing since "
                             f"{'it' if len(bad) == 1 else 'they'} arrived: {printable(str(bad[0].path))}"
                             + (" and others" if len(bad) > 1 else "") + "; download or copy it again")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: the findings and the readings they come from.")
@click.option("--no-load", is_flag=True, help="Skip the test run of the starter (a few seconds; with a GPU, two runs).")
@click.option("--offline", is_flag=True, help="Do not ask whether the Hugging Face Hub answers.")
def doctor(as_json, no_load, offline):
    """Check this installation: what llama.cpp was built with and which CPU kernels it runs, every
    GPU against what the build can use, a real run of the starter (with a GPU: offloaded and not,
    to see the GPU do the work), free disk for models, the Hub, versions, threads.

    Each problem comes with the command that fixes it. Exit 11 when something is broken.
    """
    from ..doctor import ProblemsFound, gather, judge, report
    from ..doctor import as_json as to_json

    with slow_work("checking"):
        situation = gather(load=not no_load, hub=not offline)
    findings = judge(situation)
    if as_json:
        click.echo(to_json(situation, findings))
    else:
        for line in report(findings):
            click.echo(printable(line))
    broken = [f for f in findings if f.status == "error"]
    if broken:
        raise ProblemsFound(f"{len(broken)} problem{'s' if len(broken) > 1 else ''} found: {broken[0].check}"
                            + (" and more" if len(broken) > 1 else "") + " (the fix is above)")
