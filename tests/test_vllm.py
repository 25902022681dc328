"""vLLM for scale-out: the commands chosen for 1, 2 and 8 GPUs and 2 nodes, and `serve --engine
vllm` serving through an OpenAI-compatible engine on 127.0.0.1. No vLLM is installed here: the
remote engine in the end-to-end test is a second `localllm serve` with the same model as GGUF
(the same tokenizer: the starter's token ids are the same either way)."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import assert_one_line_error, run_cli
from server_process import ServerProcess, isolated_env

from localllm.backends.vllm.plan import find_vllm, plan_vllm
from localllm.errors import UsageError

GB = 10**9
H100 = (80 * GB, 85 * GB)


def command(gpus, nodes=1, n_head=64, n_head_kv=8):
    return plan_vllm("/opt/vllm/bin/vllm", "/models/Llama-70B", "Llama-70B", n_head, n_head_kv, gpus, nodes, 8192,
                     "127.0.0.1", 9000)


def test_one_gpu():
    plan = command([H100])
    assert plan.command == ("/opt/vllm/bin/vllm", "serve", "/models/Llama-70B", "--served-model-name", "Llama-70B",
                            "--host", "127.0.0.1", "--port", "9000", "--tensor-parallel-size", "1",
                            "--pipeline-parallel-size", "1", "--max-model-len", "8192", "--gpu-memory-utilization", "0.94")


def test_two_and_eight_gpus_split_tensors_and_two_nodes_add_pipeline_stages_over_ray():
    assert (command([H100] * 2).tensor_parallel, command([H100] * 2).pipeline_parallel) == (2, 1)
    eight = command([H100] * 8)
    assert (eight.tensor_parallel, eight.pipeline_parallel) == (8, 1)
    nodes = command([H100] * 8, nodes=2)
    assert (nodes.tensor_parallel, nodes.pipeline_parallel) == (8, 2)
    assert nodes.command[-2:] == ("--distributed-executor-backend", "ray")
    # 20 heads do not split 8 ways: tensor parallel 8 is impossible, 4 x 2 stages serve instead.
    odd = command([H100] * 8, n_head=20, n_head_kv=4)
    assert (odd.tensor_parallel, odd.pipeline_parallel) == (4, 2)


def test_the_memory_share_is_what_the_least_free_gpu_gives():
    assert command([H100, (40 * GB, 85 * GB)]).memory_share == 0.47
    with pytest.raises(UsageError, match="too little free memory"):
        command([(5 * GB, 85 * GB)])
    with pytest.raises(UsageError, match="none is visible"):
        command([])


def test_a_missing_vllm_says_how_to_install_it_in_its_own_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="its own environment"):
        find_vllm(None)
    with pytest.raises(UsageError, match="not an executable"):
        find_vllm(str(tmp_path / "nothing"))


@pytest.mark.slow
def test_serve_refuses_what_vllm_cannot_serve(starter_checkpoint, tmp_path):
    env = {"PATH": str(tmp_path)}
    assert_one_line_error(run_cli("serve", "--engine", "vllm", "-m", "starter", env=env), 2, "safetensors checkpoints")
    assert_one_line_error(run_cli("serve", "--engine", "vllm", "-m", str(starter_checkpoint), env=env), 2,
                          "its own environment")


@pytest.mark.slow
def test_serve_answers_through_an_openai_compatible_engine(starter_checkpoint, tmp_path):
    remote = ServerProcess("-m", "starter", "--ctx", "1024", "--threads", "2", "--quiet", env=isolated_env(tmp_path / "a"))
    front = None
    try:
        front = ServerProcess("--engine", "vllm", "--vllm-url", remote.url, "-m", str(starter_checkpoint), "--ctx", "1024",
                              env=isolated_env(tmp_path / "b"))
        question = [{"role": "user", "content": "Name a fruit."}]
        direct = openai.OpenAI(base_url=f"{remote.url}/v1", api_key="x").chat.completions.create(
            model="starter", messages=question, temperature=0, max_tokens=16)
        api = openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0)
        through = api.chat.completions.create(model=str(starter_checkpoint), messages=question, temperature=0, max_tokens=16)
        assert through.choices[0].message.content == direct.choices[0].message.content
        assert through.usage.completion_tokens == direct.usage.completion_tokens
        streamed = api.chat.completions.create(model=str(starter_checkpoint), messages=question, temperature=0,
                                               max_tokens=16, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == direct.choices[0].message.content
        # The stop string met comes back through vLLM's `stop_reason` (Anthropic's API names it).
        text = direct.choices[0].message.content
        stop = text[len(text) // 2:len(text) // 2 + 3]
        stopped = httpx.post(f"{front.url}/v1/messages", json={
            "model": str(starter_checkpoint), "max_tokens": 16, "messages": question, "stop_sequences": [stop],
            "temperature": 0}).json()
        assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == stop, stopped
        assert stopped["content"][0]["text"] == text[:text.index(stop)]
        other = httpx.post(f"{front.url}/v1/chat/completions", json={"model": "starter", "messages": question})
        assert other.status_code == 400 and "no other model" in other.json()["error"]["message"]
    finally:
        if front is not None:
            front.stop()
        remote.stop()
