"""The CLI starts fast: help and version load neither llama.cpp nor the TUI."""

from __future__ import annotations

import subprocess
import sys

from conftest import run_cli

PROBE = """
import sys
from localllm.cli import main
try:
    main({args!r})
except SystemExit as exit:
    heavy = sorted(m for m in ("llama_cpp", "textual", "huggingface_hub", "numpy") if m in sys.modules)
    print("EXIT", exit.code, "HEAVY", heavy, file=sys.stderr)
"""


def probe(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True, text=True, timeout=60)
    return proc.stderr.strip().splitlines()[-1]


def test_help_and_version_import_nothing_heavy():
    for args in (["--help"], ["--version"], ["run", "--help"], ["list", "--help"]):
        assert probe(*args) == "EXIT 0 HEAVY []", args


def test_usage_errors_do_not_load_llama_cpp():
    assert probe("run", "--max-tokens", "0", "hi") == "EXIT 2 HEAVY []"


def test_version():
    from localllm import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_run_help_documents_every_option():
    result = run_cli("run", "--help")
    for option in ("--prompt", "--model", "--system", "--max-tokens", "--temperature", "--top-p", "--seed",
                   "--ctx", "--threads", "--gpu-layers", "--json", "--no-stream", "--verbose"):
        assert option in result.stdout, option


def test_unknown_command_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
