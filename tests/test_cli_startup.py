"""The CLI starts fast: help, version and usage errors load neither llama.cpp nor the TUI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import invoke

HEAVY = ("llama_cpp", "textual", "huggingface_hub", "numpy", "starlette", "uvicorn", "llguidance")


def imported_modules(*args: str) -> tuple[int, set[str]]:
    """Exit code and every module a real `python -m localllm ARGS` imported (from -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "localllm", *args], capture_output=True, text=True, timeout=60)
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc.returncode, modules


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["list", "--help"], ["serve", "--help"],
                                  ["run", "--max-tokens", "0", "hi"]])
def test_nothing_heavy_is_imported(args):
    code, modules = imported_modules(*args)
    assert code == (2 if "--max-tokens" in args else 0)
    assert "localllm.cli" in modules, "the probe must see the imports"
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_version():
    from localllm import __version__

    result = invoke("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_run_help_documents_every_option():
    result = invoke("run", "--help")
    for option in ("--prompt", "--model", "--system", "--max-tokens", "--temperature", "--top-p", "--seed",
                   "--ctx", "--threads", "--gpu-layers", "--json", "--no-stream", "--verbose"):
        assert option in result.stdout, option


def test_serve_help_documents_every_option():
    result = invoke("serve", "--help")
    for option in ("--model", "--host", "--port", "--parallel", "--queue", "--keep-alive", "--api-key", "--cors",
                   "--ctx", "--max-body", "--quiet", "LOCALLLM_API_KEY", "8642"):
        assert option in result.stdout, option


def test_unknown_command_is_a_usage_error():
    result = invoke("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_one_exit_code_table_for_the_errors_the_readme_and_help():
    import re
    from pathlib import Path

    import localllm
    from localllm.cli import cli
    from localllm.errors import EXIT_CODES, LocalLLMError

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Exit codes"):]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section[:section.index("\n\n", section.index("| code"))], re.M)}
    assert documented == set(EXIT_CODES)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    import localllm.backends.llamacpp.rpc
    import localllm.doctor  # noqa: E401,F401  (their error classes)
    import localllm.engine
    import localllm.transfer

    assert {sub.exit_code for sub in subclasses(LocalLLMError)} <= set(EXIT_CODES)
    from click.testing import CliRunner

    shown = CliRunner().invoke(cli, ["--help"]).output
    assert all(re.search(rf"^\s+{code}\s", shown, re.M) for code in EXIT_CODES), shown
    assert localllm.__version__
