"""GGUF inspection: local files, split files, and remote headers over real HTTP on loopback."""

from __future__ import annotations

import pytest
from hub_server import HubServer

from localllm import ModelLoadError, ModelNotFoundError
from localllm.errors import DownloadError
from localllm.gguf_info import inspect_file, inspect_remote
from localllm.gguf_names import split_files


@pytest.fixture(scope="session")
def starter_spec(starter_gguf, spec_cache):
    return inspect_file(starter_gguf, spec_cache)


def test_starter_shapes(starter_spec, starter_gguf):
    s = starter_spec
    assert (s.architecture, s.n_layer, s.n_embd, s.n_head, s.head_dim_k, s.n_ff) == ("llama", 30, 576, 9, 64, 1536)
    assert s.n_head_kv == (3,) * 30 and s.n_vocab == 49152 and s.n_ctx_train == 8192
    assert s.file_type == "Q4_1" and s.sliding_window is None and s.swa_layers == ()
    assert len(set(s.layer_bytes)) == 1 and s.total_bytes == sum(s.layer_bytes) + s.other_bytes
    assert s.total_bytes == starter_gguf.stat().st_size - 1785664, "all tensor data: the file less its header"
    assert s.output_bytes == 49152 * 576 * 34 // 32, "tied embeddings: the q8_0 token embedding is the output head"


def test_cache_is_used(starter_gguf, spec_cache, starter_spec):
    cached = list(spec_cache.glob("*.json"))
    assert cached
    assert inspect_file(starter_gguf, spec_cache) == starter_spec


def test_split_file_names(tmp_path):
    first = tmp_path / "Big-Q4_K_M-00001-of-00003.gguf"
    assert [p.name for p in split_files(first)] == [f"Big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_files(tmp_path / "single.gguf") == [tmp_path / "single.gguf"]
    first.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="missing 2 of 3 parts"):
        inspect_file(first)


@pytest.fixture
def hub(starter_gguf, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with HubServer() as server:
        server.add("someone/smol", "smol.gguf", starter_gguf)
        yield server


def test_remote_header_matches_the_local_file(hub, starter_spec, starter_gguf):
    endpoint = hub.url
    spec = inspect_remote("someone/smol", "smol.gguf", endpoint=endpoint)
    assert spec.layer_bytes == starter_spec.layer_bytes and spec.n_head_kv == starter_spec.n_head_kv
    assert spec.total_bytes == starter_spec.total_bytes
    assert hub.body_bytes < starter_gguf.stat().st_size / 10, "only the header crosses the network"


def test_remote_header_grows_its_fetch_until_complete(hub, starter_spec):
    endpoint = hub.url
    spec = inspect_remote("someone/smol", "smol.gguf", endpoint=endpoint, first_chunk=64 * 1024)
    assert spec.total_bytes == starter_spec.total_bytes


def test_remote_missing_file(hub):
    endpoint = hub.url
    with pytest.raises(ModelNotFoundError):
        inspect_remote("someone/smol", "absent.gguf", endpoint=endpoint)


def test_offline_mode_is_a_clear_error(starter_gguf):
    with pytest.raises(DownloadError, match="offline"):
        inspect_remote("someone/smol", "smol.gguf", endpoint="http://127.0.0.1:9")


def test_server_down_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DownloadError, match="cannot reach"):
        inspect_remote("someone/smol", "smol.gguf", endpoint="http://127.0.0.1:9")


def test_a_remote_file_that_is_not_gguf_names_its_url_whole(hub, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 1000)
    hub.add("someone/junk", "junk.gguf", junk)
    with pytest.raises(ModelLoadError) as caught:
        inspect_remote("someone/junk", "junk.gguf", endpoint=hub.url)
    assert f"cannot load {hub.url}/someone/junk/resolve/main/junk.gguf" in str(caught.value), "http://, never http:/"


def test_a_lying_remote_header_is_refused_without_fetching_what_it_claims(hub, tmp_path):
    import hostile_gguf

    hub.add("someone/evil", "evil.gguf", hostile_gguf.write(tmp_path, "huge-string-array"))
    with pytest.raises(ModelLoadError, match="elements"):
        inspect_remote("someone/evil", "evil.gguf", endpoint=hub.url)
    assert hub.body_bytes < 64 * 1024, "one small range request, not the 2^40 strings it claims"
