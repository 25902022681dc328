"""Models brought by hand and carried offline: `add FILE`, `pull --to DIR` then `add DIR` on
another machine (a second, empty home here), `verify`, and Ollama's store read in place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from conftest import assert_one_line_error, invoke, run_cli
from hub_server import HubServer
from test_pull import Q4, Q8, REPO, env_for, hub, variant  # noqa: F401  (fixtures)

PULLED_NAME = f"{REPO}/{Q8}"


def flip_byte(path, offset=-4096):  # in the tensor data: the header stays sound
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def carried_once(starter_gguf, variant, tmp_path_factory):  # noqa: F811
    """One `pull --to` for the hostile-manifest cases, which each change a copy of its manifest."""
    root = tmp_path_factory.mktemp("carried")
    with HubServer() as server:
        server.add(REPO, Q8, starter_gguf)
        server.add(REPO, Q4, variant)
        machine = {"HF_HOME": str(root / "hf"), "LOCALLLM_HOME": str(root / "localllm"), "HOME": str(root / "user")}
        assert invoke("pull", PULLED_NAME, "--to", str(root / "usb"), env={**env_for(server), **machine}).returncode == 0
    return root / "usb"


def other_machine(tmp_path, name="other") -> dict:
    """A second machine: its own localllm home and Hugging Face cache, no network."""
    return {"LOCALLLM_HOME": str(tmp_path / name / "localllm"), "HF_HOME": str(tmp_path / name / "hf"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_add_registers_a_file_in_place_and_verify_catches_a_flipped_byte(starter_gguf, tmp_path):
    mine = tmp_path / "mine.gguf"
    shutil.copyfile(starter_gguf, mine)
    result = run_cli("add", str(mine), "--name", "my-model")
    assert result.returncode == 0, result
    # The shapes `list` needs were read by `add` (a 1 GB file took 13 s on the first list).
    from localllm.config import cache_dir
    from localllm.gguf_info import _identity

    assert (cache_dir() / f"{_identity([mine], 'spec')}.json").is_file()
    listed = {m["name"]: m for m in json.loads(run_cli("list", "--json").stdout)}
    assert listed["my-model"]["source"] == "added" and listed["my-model"]["path"] == str(mine)
    assert run_cli("run", "-m", "my-model", "--max-tokens", "4", "Hi").returncode == 0
    checks = json.loads(run_cli("verify", "--json").stdout)
    assert {c["model"]: c["status"] for c in checks} == {"my-model": "ok", "smollm2-135m-instruct:q4_1": "ok"}

    flip_byte(mine)
    result = run_cli("verify", "my-model")
    assert result.returncode == 10 and "changed" in result.stdout and "Traceback" not in result.stderr
    assert_one_line_error(run_cli("add", str(mine), "--name", "my-model"), 2, "already installed")
    assert_one_line_error(run_cli("add", str(tmp_path), "--name", "x"), 2, "--name is for a single .gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    assert_one_line_error(run_cli("add", str(tmp_path / "bad.gguf")), 4, "not a GGUF file")
    assert run_cli("rm", "my-model", "--yes").returncode == 0
    assert mine.exists() and "my-model" not in run_cli("list").stdout


@pytest.mark.slow
def test_pull_to_a_folder_then_add_it_on_a_machine_without_network(hub, tmp_path, isolated_home):  # noqa: F811
    carried = tmp_path / "usb"
    result = run_cli("pull", PULLED_NAME, "--to", str(carried), env=env_for(hub))
    assert result.returncode == 0, result
    manifest = json.loads((carried / "localllm-manifest.json").read_text())
    assert manifest["repo_id"] == REPO and [f["path"] for f in manifest["files"]] == [Q8]
    assert manifest["files"][0]["sha256"] == hashlib.sha256((carried / Q8).read_bytes()).hexdigest()

    other = other_machine(tmp_path)
    result = run_cli("add", str(carried), env=other)
    assert result.returncode == 0, result
    installed = {m["name"]: m for m in json.loads(run_cli("list", "--json", env=other).stdout)}
    assert installed[PULLED_NAME]["source"] == "hf-cache"  # as if pulled there
    assert run_cli("run", "-m", PULLED_NAME, "--max-tokens", "4", "Hi", env=other).returncode == 0
    assert json.loads(run_cli("verify", PULLED_NAME, "--json", env=other).stdout)[0]["status"] == "ok"

    flip_byte(carried / Q8)
    third = other_machine(tmp_path, "third")
    assert_one_line_error(run_cli("add", str(carried), env=third), 10, "does not match its SHA-256", "nothing was installed")
    assert not (tmp_path / "third" / "hf").exists() or not any((tmp_path / "third" / "hf").rglob("*.gguf"))


@pytest.mark.parametrize("change, says", [
    (lambda m: m["files"][0].update(path="../outside.gguf"), "unsafe file name"),
    (lambda m: m["files"][0].update(sha256="zz"), "each file needs"),
    (lambda m: m.update(revision="main"), "revision is not a commit"),
    (lambda m: m.update(repo_id="../../etc"), "repo_id"),
    (lambda m: m["files"].append(dict(m["files"][0])), "listed twice"),
    (lambda m: m.update(entry="/etc/passwd"), "entry must be one of the files"),
    (lambda m: m.update(entry="../../outside.gguf"), "entry must be one of the files"),
    (lambda m: m.update(format="exe"), "format must be"),
])
def test_a_hostile_manifest_is_refused_before_anything_is_read(carried_once, tmp_path, change, says):
    carried = tmp_path / "usb"
    shutil.copytree(carried_once, carried, copy_function=os.link)  # the model linked, not copied
    path = carried / "localllm-manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.unlink()  # a new file: the linked one is every case's
    path.write_text(json.dumps(manifest))
    assert_one_line_error(invoke("add", str(carried), env=other_machine(tmp_path)), 2, says)


def test_a_manifest_nested_too_deep_is_bad_json_not_a_crash(tmp_path):
    (tmp_path / "localllm-manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    result = invoke("add", str(tmp_path))
    assert_one_line_error(result, 2, "is not valid JSON")
    assert "RecursionError" not in result.stderr


def test_add_of_a_folder_without_a_manifest_says_what_to_use(tmp_path):
    assert_one_line_error(invoke("add", str(tmp_path)), 2, "no localllm-manifest.json", "--add-dir")


def ollama_store(root, starter_gguf, name="library/smollm2", tag="135m"):
    """A store as Ollama writes it: the GGUF as a blob named by its digest, and a manifest."""
    data = starter_gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    template = b"{{ .Prompt }}"
    template_digest = hashlib.sha256(template).hexdigest()
    (root / "blobs" / f"sha256-{template_digest}").write_bytes(template)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{'0' * 64}", "size": 2},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
                           {"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{template_digest}",
                            "size": len(template)}]}
    path = root / "manifests" / "registry.ollama.ai" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.slow
def test_ollamas_store_is_listed_run_in_place_and_verified(starter_gguf, tmp_path, isolated_home):
    store = isolated_home / "user" / ".ollama" / "models"  # where Ollama keeps it for this HOME
    ollama_store(store, starter_gguf)
    ollama_store(store, starter_gguf, name="someone/tiny", tag="latest")
    listed = {m["name"]: m for m in json.loads(run_cli("list", "--json").stdout)}
    assert listed["ollama:smollm2:135m"]["source"] == "ollama"
    assert listed["ollama:smollm2:135m"]["quant"] == "Q4_1"  # from the GGUF's metadata: a blob has no telling name
    assert "ollama:someone/tiny:latest" in listed
    result = run_cli("run", "-m", "ollama:smollm2:135m", "--max-tokens", "4", "--json", "Hi")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["model"] == "ollama:smollm2:135m"
    assert run_cli("run", "-m", "ollama:someone/tiny", "--max-tokens", "2", "Hi").returncode == 0  # :latest implied
    assert {c["status"] for c in json.loads(run_cli("verify", "--json").stdout)} == {"ok"}
    assert_one_line_error(run_cli("rm", "ollama:smollm2:135m", "--yes"), 2, "does not delete other tools' files")
    assert_one_line_error(run_cli("run", "-m", "ollama:nothing:here", "Hi"), 3, "Ollama's store", "has no nothing:here")


def _edit_layer(path, **fields):
    manifest = json.loads(path.read_text())
    manifest["layers"][0].update(fields)
    path.write_text(json.dumps(manifest))


def _blob_becomes_a_link_out(store):
    """The model's blob replaced by a link to a file outside the store (same bytes, same name)."""
    blob = max((store / "blobs").glob("sha256-*"), key=lambda b: b.stat().st_size)
    outside = store.parent / "elsewhere" / blob.name
    outside.parent.mkdir()
    blob.rename(outside)
    blob.symlink_to(outside)


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_text("{not json"), "cannot be read as JSON"),
    (lambda p: p.write_text(json.dumps({"layers": []})), "0 model layers"),
    (lambda p: _edit_layer(p, digest="md5:0123"), "without a sha256"),
    (lambda p: _edit_layer(p, size=12), "says the model is 12 bytes"),
    (lambda p: [b.unlink() for b in (p.parents[4] / "blobs").glob("sha256-*") if b.stat().st_size > 1000], "not in"),
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "cannot be read as JSON"),
    (lambda p: _blob_becomes_a_link_out(p.parents[4]), "a link that leaves"),
])
def test_a_broken_ollama_manifest_is_a_clear_error(starter_gguf, isolated_home, damage, says):
    store = isolated_home / "user" / ".ollama" / "models"
    damage(ollama_store(store, starter_gguf))
    assert_one_line_error(invoke("run", "-m", "ollama:smollm2:135m", "Hi"), 4, "Ollama's manifest", says)
    result = invoke("list")
    assert result.returncode == 0 and "ollama:smollm2:135m" not in result.stdout


def test_ollama_models_env_moves_the_store(starter_gguf, tmp_path):
    ollama_store(tmp_path / "elsewhere", starter_gguf)
    listed = invoke("list", "--json", env={"OLLAMA_MODELS": str(tmp_path / "elsewhere")})
    assert "ollama:smollm2:135m" in {m["name"] for m in json.loads(listed.stdout)}
