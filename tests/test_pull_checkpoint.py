"""Pulling a safetensors checkpoint (for the transformers engine) from a Hub server on 127.0.0.1:
the same verified, resumable transfer as GGUF files; list, run and rm."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import run_cli
from hub_server import COMMIT, HubServer

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the catalog's safetensors_repo for smollm2

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(starter_checkpoint, starter_gguf, isolated_home, tmp_path):
    with HubServer() as server:
        for file in starter_checkpoint.iterdir():
            server.add(REPO, file.name, file)
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"\0" * 1000)
        for name in ("pytorch_model.bin", "original/consolidated.safetensors", "onnx/model.onnx"):
            server.add(REPO, name, junk)  # other formats and folders stay on the Hub
        yield server


def env_for(hub) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("ref, flags", [(REPO, ()), ("smollm2:135m", ("--full",))])
def test_a_checkpoint_is_pulled_whole_listed_run_and_removed(hub, isolated_home, starter_checkpoint, ref, flags):
    pulled = run_cli("pull", ref, *flags, env=env_for(hub))
    assert pulled.returncode == 0, pulled.stderr
    folder = isolated_home / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert pulled.stdout.strip() == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in starter_checkpoint.iterdir())
    assert all(digest(folder / p.name) == digest(p) for p in starter_checkpoint.iterdir())
    assert not any(".bin" in path or "onnx" in path or "original" in path for path in hub.requested_paths())
    assert "safetensors" in pulled.stderr and "transformers" in pulled.stderr

    listed = [m for m in json.loads(run_cli("list", "--json").stdout) if m["source"] == "hf-cache"]
    assert [(m["name"], m["format"], m["path"]) for m in listed] == [(REPO, "safetensors", str(folder))]
    ran = run_cli("run", "-m", REPO, "-t", "0", "--max-tokens", "4", "--threads", "2", "--json", "Hi")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["settings"]["engine"] == "transformers"

    removed = run_cli("rm", REPO, "--yes")
    assert removed.returncode == 0 and "GB freed" in removed.stderr, removed.stderr
    assert not folder.exists()
    blobs = folder.parent.parent / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())
    assert not [m for m in json.loads(run_cli("list", "--json").stdout) if m["source"] == "hf-cache"]


def test_a_repo_without_a_checkpoint_says_so(hub, isolated_home, starter_gguf):
    hub.add("someone/only-bins", "pytorch_model.bin", starter_gguf)
    hub.add("someone/only-bins", "config.json", starter_gguf)
    result = run_cli("pull", "someone/only-bins", env=env_for(hub))
    assert result.returncode == 3 and "holds no safetensors checkpoint" in result.stderr, result.stderr
