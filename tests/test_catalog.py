"""The catalog's schema, user entries, model references, other tools' folders, and `show`/`catalog`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import assert_one_line_error, invoke, run_cli

from localllm import ModelNotFoundError
from localllm.catalog import load_catalog, parse_catalog
from localllm.errors import CatalogError
from localllm.gguf_names import QUANT_ORDER
from localllm.references import parse_reference

FAMILIES = {"qwen3", "llama3.2", "llama3.1", "llama3.3", "gemma3", "phi4-mini", "mistral", "smollm2",
            "deepseek-r1-distill", "gpt-oss"}


def test_shipped_catalog_is_valid_and_covers_the_families():
    catalog = load_catalog()
    assert FAMILIES <= set(catalog.defaults)
    params = [e.params_b for e in catalog.entries]
    assert min(params) < 0.5 and max(params) >= 70, "from old laptops to workstations"
    for entry in catalog.entries:
        assert entry.arch.n_head % entry.arch.n_head_kv == 0, entry.ref
        assert entry.context_length >= 8192, entry.ref
        for quant in entry.quants:
            assert quant.quant.upper() in QUANT_ORDER + ("MXFP4",), (entry.ref, quant.quant)
            assert all(f.endswith(".gguf") and quant.quant.lower() in f.lower() for f in quant.files), (entry.ref, quant)
            spec = entry.spec(quant)
            assert spec.weights_bytes == pytest.approx(quant.size, rel=0.01), "the planner sees the published size"
        sizes = [q.size for q in entry.quants if q.quant in QUANT_ORDER]
        order = [QUANT_ORDER.index(q.quant) for q in entry.quants if q.quant in QUANT_ORDER]
        by_quality = [s for _, s in sorted(zip(order, sizes))]
        assert by_quality == sorted(by_quality, reverse=True), f"{entry.ref}: better quants are bigger"
    seeing = [e for e in catalog.entries if e.vision]
    assert {e.ref for e in seeing} >= {"gemma3:4b", "gemma3:12b", "gemma3:27b"}, "a vision model for 8, 16 and 32 GB"
    assert not catalog.find("gemma3", "1b").vision
    split = [q for e in catalog.entries for q in e.quants if len(q.files) > 1]
    assert split, "split GGUFs are described file by file"


def test_catalog_sizes_match_their_shapes():
    """A cross-check of the hand-entered data: Q8_0 is about 8.5 bits per parameter."""
    for entry in load_catalog().entries:
        q8 = entry.quant("Q8_0")
        if q8 is not None:
            bits = q8.size * 8 / (entry.params_b * 1e9)
            assert 7.5 < bits < 9.5, (entry.ref, bits)


def test_the_catalog_ships_inside_the_package():
    from importlib.resources import files

    assert files("localllm.models").joinpath("catalog.json").is_file()


def write_user_catalog(isolated_home, data) -> Path:
    path = isolated_home / "localllm" / "catalog.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


USER_FAMILY = {
    "name": "tiny", "family": "Tiny", "license": "MIT", "default": "135m", "description": "mine",
    "sizes": {"135m": {
        "params_b": 0.135, "context_length": 8192,
        "arch": {"architecture": "llama", "n_layer": 30, "n_embd": 576, "n_head": 9, "n_head_kv": 3, "head_dim": 64, "n_vocab": 49152},
        "safetensors_repo": "me/tiny", "gguf_repo": "me/tiny-GGUF", "pattern": "tiny-{quant}.gguf",
        "quants": {"Q8_0": 0.145}}},
}


def test_user_entries_add_and_replace_families(isolated_home):
    qwen = dict(USER_FAMILY, name="qwen3", default="135m")
    write_user_catalog(isolated_home, {"schema": 1, "models": [USER_FAMILY, qwen]})
    catalog = load_catalog()
    assert catalog.find("tiny").quants[0].files == ("tiny-Q8_0.gguf",)
    assert catalog.sizes("qwen3") == ["135m"], "a family of the same name replaces the shipped one"
    assert catalog.find("gemma3") is not None, "the rest of the shipped catalog stays"


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f["sizes"]["135m"].pop("arch"), "models[0].sizes.135m.arch is missing"),
    (lambda f: f["sizes"]["135m"].update(contxt_length=1), "unknown fields: contxt_length"),
    (lambda f: f["sizes"]["135m"]["arch"].update(n_layer="30"), "n_layer must be int, not str"),
    (lambda f: f["sizes"]["135m"].update(gguf_repo="no-owner"), "must be owner/name"),
    (lambda f: f.update(default="7b"), "default '7b' is not one of its sizes"),
    (lambda f: f["sizes"]["135m"].update(quants={}), "quants is empty"),
    (lambda f: f["sizes"]["135m"].update(projector_gb=0.2), 'projector_gb is for a model with "vision": true'),
])
def test_bad_user_catalog_is_named_precisely(isolated_home, mutate, message):
    family = json.loads(json.dumps(USER_FAMILY))
    mutate(family)
    path = write_user_catalog(isolated_home, {"schema": 1, "models": [family]})
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog()
    result = invoke("catalog")
    assert_one_line_error(result, 2, str(path), message)


def test_user_catalog_that_is_not_json(isolated_home):
    path = write_user_catalog(isolated_home, "{nope")
    with pytest.raises(CatalogError, match=f"catalog {path}: not valid JSON"):
        load_catalog()


def test_parse_catalog_rejects_a_wrong_schema():
    with pytest.raises(CatalogError, match="schema must be 1"):
        parse_catalog({"schema": 2, "models": []}, "x")


@pytest.mark.parametrize("text, kind, repo, filename, quant, size", [
    ("qwen3", "catalog", "bartowski/Qwen_Qwen3-8B-GGUF", None, None, "8b"),
    ("qwen3:4b", "catalog", "bartowski/Qwen_Qwen3-4B-GGUF", None, None, "4b"),
    ("Qwen3:8B-Q4_K_M", "catalog", "bartowski/Qwen_Qwen3-8B-GGUF", None, "Q4_K_M", "8b"),
    ("qwen3:q8_0", "catalog", "bartowski/Qwen_Qwen3-8B-GGUF", None, "Q8_0", "8b"),
    ("hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M", "hub", "unsloth/Qwen3-8B-GGUF", None, "Q4_K_M", None),
    ("https://huggingface.co/unsloth/Qwen3-8B-GGUF", "hub", "unsloth/Qwen3-8B-GGUF", None, None, None),
    ("owner/repo/sub/file-Q4_K_M.gguf", "hub", "owner/repo", "sub/file-Q4_K_M.gguf", None, None),
    ("my-model", "name", None, None, None, None),
])
def test_references(text, kind, repo, filename, quant, size):
    ref = parse_reference(text, load_catalog())
    assert (ref.kind, ref.repo_id, ref.filename, ref.quant) == (kind, repo, filename, quant)
    assert (ref.entry.size if ref.entry else None) == size


def test_local_paths_are_references(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert parse_reference(str(tmp_path / "m.gguf"), load_catalog()).path == tmp_path / "m.gguf"
    assert parse_reference("./missing.gguf", load_catalog()).kind == "path"


@pytest.mark.parametrize("text, hint", [
    ("qwen3:99b-q4_k_m", "qwen3 comes in 0.6b, 1.7b, 4b, 8b, 14b, 32b"),
    ("qwen3:8b-q1", "qwen3:8b comes in Q4_K_M, Q5_K_M, Q6_K, Q8_0"),
    ("hf.co/just-one-part", "a Hub reference is owner/repo"),
])
def test_bad_references_say_what_exists(text, hint):
    with pytest.raises(ModelNotFoundError, match=re.escape(hint)):
        parse_reference(text, load_catalog())


@pytest.mark.slow
def test_models_of_other_tools_are_listed_and_run_in_place(isolated_home, starter_gguf, tmp_path):
    lm_studio = isolated_home / "user" / ".lmstudio" / "models" / "someone" / "Tiny-GGUF"
    llama_cpp = isolated_home / "user" / ".cache" / "llama.cpp"
    mine = tmp_path / "my models"
    for folder, name in ((lm_studio, "tiny-Q4_1.gguf"), (llama_cpp, "someone_Tiny-GGUF_tiny2-Q4_1.gguf"), (mine, "mine.gguf")):
        folder.mkdir(parents=True)
        os.link(starter_gguf, folder / name)
    added = run_cli("list", "--add-dir", str(mine), "--json")
    assert added.returncode == 0, added
    listed = {m["name"]: m for m in json.loads(added.stdout)}
    assert listed["someone/Tiny-GGUF/tiny-Q4_1.gguf"]["source"] == "lm-studio"
    assert listed["someone_Tiny-GGUF_tiny2-Q4_1.gguf"]["source"] == "llama.cpp"
    assert listed["mine.gguf"]["source"] == "folder" and listed["mine.gguf"]["quant"] == "Q4_1", "from the metadata"
    assert json.loads(run_cli("list", "--json").stdout) == list(listed.values()), "the added folder is remembered"
    ran = run_cli("run", "-m", "tiny-Q4_1", "--json", "-t", "0", "--max-tokens", "3", "Hi")
    assert ran.returncode == 0, ran
    assert json.loads(ran.stdout)["path"] == str(lm_studio / "tiny-Q4_1.gguf"), "run where it is, not copied"
    text = run_cli("list").stdout.splitlines()
    assert text[0].split() == ["NAME", "SIZE", "FORMAT", "QUANT", "FIT", "HERE", "SOURCE", "PATH"]
    forgotten = run_cli("list", "--remove-dir", str(mine), "--json")
    assert forgotten.returncode == 0 and "mine.gguf" not in {m["name"] for m in json.loads(forgotten.stdout)}
    assert (mine / "mine.gguf").exists(), "its files are not touched"
    assert_one_line_error(run_cli("list", "--remove-dir", str(mine)), 2, "not a folder added with --add-dir")


def test_show_and_catalog_work_offline():
    shown = invoke("show", "--json", "qwen3:8b")
    assert shown.returncode == 0, shown
    info = json.loads(shown.stdout)
    assert info["installed"] is False and info["layers"] == 36 and info["repo"] == "bartowski/Qwen_Qwen3-8B-GGUF"
    assert [q["quant"] for q in info["quants"]] == ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    assert all(q["label"] in ("fits on GPU", "partial offload", "CPU only", "does not fit") for q in info["quants"])
    starter = json.loads(invoke("show", "--json", "starter").stdout)
    assert starter["installed"] is True and starter["quant"] == "Q4_1" and starter["context_length"] == 8192
    assert invoke("catalog").stdout.splitlines()[0].split()[:3] == ["NAME", "QUANT", "SIZE"]
    rows = json.loads(invoke("catalog", "--json").stdout)
    assert {r["ref"].split(":")[0] for r in rows} >= FAMILIES
    huge = next(r for r in rows if r["ref"] == "llama3.3:70b")
    if huge["fit"] == "none":
        assert huge["quant"] == "Q3_K_M", "when nothing fits, the smallest is offered"
