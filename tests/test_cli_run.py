"""`localllm run` as a script user sees it: stdout carries only the answer, stderr the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import LOCALLLM, assert_one_line_error, run_cli

from localllm import SamplingOptions
from localllm.model import collect

pytestmark = pytest.mark.slow


def test_answer_streams_to_stdout_and_nothing_else():
    result = run_cli("run", "-m", "starter", "-t", "0", "--max-tokens", "30", "Why is the sky blue?")
    assert result.returncode == 0, result
    assert result.stdout.strip()
    assert result.stderr == "", "llama.cpp's log and any progress must stay off a non-verbose run"


def test_verbose_shows_llama_cpp_log_on_stderr_only():
    quiet = run_cli("run", "-m", "starter", "-t", "0", "--max-tokens", "10", "Hi")
    loud = run_cli("run", "-m", "starter", "-t", "0", "--max-tokens", "10", "--verbose", "Hi")
    assert loud.returncode == 0
    assert "llama_model_loader" in loud.stderr or "load_tensors" in loud.stderr
    assert loud.stdout == quiet.stdout


def test_temperature_zero_is_the_same_across_processes():
    args = ("run", "-m", "starter", "-t", "0", "--max-tokens", "40", "Give me a fun fact.")
    assert run_cli(*args).stdout == run_cli(*args).stdout


def test_seed_repeats_across_processes():
    args = ("run", "-m", "starter", "--seed", "42", "-t", "1.0", "--max-tokens", "40", "Write a haiku.")
    assert run_cli(*args).stdout == run_cli(*args).stdout


def test_json_output():
    result = run_cli("run", "-m", "starter", "--json", "-t", "0", "--max-tokens", "12", "--ctx", "1024", "Hello")
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert data["text"]
    assert data["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert data["model"] == "smollm2-135m-instruct:q4_1", "the name `localllm list` shows"
    assert data["finish_reason"] in ("stop", "length")
    assert data["usage"]["prompt_tokens"] > 0 and 0 < data["usage"]["completion_tokens"] <= 12
    timings = data["timings"]
    for key in ("load_s", "ttft_s", "prompt_tokens_per_s", "generation_tokens_per_s"):
        assert timings[key] > 0, key
    settings = data["settings"]
    assert settings["n_ctx"] == 1024 and settings["temperature"] == 0 and settings["max_tokens"] == 12
    assert isinstance(settings["seed"], int) and settings["n_threads"] >= 1


def test_json_seed_reported_reproduces_the_answer():
    first = json.loads(run_cli("run", "-m", "starter", "--json", "--max-tokens", "20", "Tell me a joke.").stdout)
    again = run_cli("run", "-m", "starter", "--seed", str(first["settings"]["seed"]), "--no-stream", "--max-tokens", "20", "Tell me a joke.")
    assert again.stdout == first["text"] + ("" if first["text"].endswith("\n") else "\n")


def test_default_model_setting(starter_gguf, isolated_home):
    assert run_cli("default", str(starter_gguf)).returncode == 0
    assert run_cli("default").stdout.strip() == str(starter_gguf)
    result = run_cli("run", "--json", "-t", "0", "--max-tokens", "5", "Hi")
    assert json.loads(result.stdout)["path"] == str(starter_gguf)
    refused = run_cli("default", "no-such-model")
    assert refused.returncode == 3
    assert run_cli("default").stdout.strip() == str(starter_gguf), "a failed set must keep the old default"


def test_without_model_uses_the_best_installed():
    result = run_cli("run", "--json", "-t", "0", "--max-tokens", "5", "Hi")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_ctrl_c_exits_130_and_keeps_the_output():
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", "-m", "starter", "--ignore-eos", "--max-tokens", "100000", "Tell a story."],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
        # A suite started from a background job inherits SIGINT as ignored; a user's shell gives the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.read(20)  # generation has started
        assert first
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert (first + rest).decode().endswith("\n"), "the shell prompt must start on a fresh line"
    assert stderr.decode().strip() == "localllm: interrupted"


# `head -c 10` stops reading mid-answer; `true` is gone before localllm has started up.
@pytest.mark.parametrize("command, reader", [("run -m starter --ignore-eos --max-tokens 2000 'Tell a story.'", "head -c 10"),
                                             ("list", "true"), ("catalog", "true")])
def test_closed_stdout_is_quiet_and_exits_141(command, reader):
    proc = subprocess.run(
        f"{LOCALLLM[0]} {command} | {reader}; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, timeout=120,
    )
    assert len(proc.stdout) == (10 if reader.startswith("head") else 0)
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr
    assert proc.returncode == 141, "the documented code for a reader that went away"


def test_raw_gives_the_text_to_the_model_without_the_chat_template(starter_model):
    text = "The capital of France is"
    raw = json.loads(run_cli("run", "-m", "starter", "--raw", "--json", "-t", "0", "--max-tokens", "8", "--spec", "off", text).stdout)
    templated = json.loads(run_cli("run", "-m", "starter", "--json", "-t", "0", "--max-tokens", "8", text).stdout)
    assert raw["usage"]["prompt_tokens"] == len(starter_model.tokenize(text))
    assert templated["usage"]["prompt_tokens"] > raw["usage"]["prompt_tokens"] + 5
    assert raw["settings"]["raw"] is True and templated["settings"]["raw"] is False
    expected = collect(starter_model.generate(text, SamplingOptions(temperature=0, max_tokens=8))).text
    assert raw["text"] == expected


def test_flash_attention_setting_is_used_and_reported():
    for value, logged in (("on", "enabled"), ("off", "disabled")):
        result = run_cli("run", "-m", "starter", "--json", "-v", "-t", "0", "--max-tokens", "4", "--flash-attn", value, "Hi")
        assert json.loads(result.stdout)["settings"]["flash_attn"] == value
        assert re.search(rf"flash_attn\s+= {logged}", result.stderr), "llama.cpp's own log says what the context uses"
    result = run_cli("run", "-m", "starter", "--flash-attn", "off", "--kv-type", "q8_0", "Hi")
    assert_one_line_error(result, 2, "quantized KV cache needs flash attention")


@pytest.mark.parametrize("option", [["--repeat-penalty", "1.3"], ["--top-k", "5"], ["--min-p", "0.2"], ["--top-p", "0.5"],
                                    ["--seed", "7", "-t", "0.7"], ["--temperature", "1.5"], ["--presence-penalty", "1.5"],
                                    ["--frequency-penalty", "-0.5"]])
def test_every_sampling_option_runs_end_to_end(option):
    # --repeat-penalty exited 1 with a TypeError: the pinned binding takes the vocabulary size first.
    result = run_cli("run", "-m", "starter", "--max-tokens", "12", "--json", *option, "Name three colors.")
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert data["usage"]["completion_tokens"] >= 1
    name = option[0].lstrip("-").replace("-", "_")
    assert str(data["settings"][name]) in (option[1], str(float(option[1])))


@pytest.mark.parametrize("option, off, strong", [("--repeat-penalty", "1.0", "1.8"), ("--presence-penalty", "0", "2"),
                                                ("--frequency-penalty", "0", "2")])
def test_a_penalty_changes_a_greedy_answer(option, off, strong):
    def answer(penalty: str) -> str:
        result = run_cli("run", "-m", "starter", "-t", "0", "--max-tokens", "60", "--ignore-eos", option, penalty,
                         "--raw", "one, two, three, one, two, three, one, two, three,")
        assert result.returncode == 0, result
        return result.stdout
    assert answer(off) != answer(strong), "a strong penalty must steer greedy decoding away from the repeats"


def test_prompt_progress_shows_at_once_and_its_eta_follows_the_measured_slowdown():
    from localllm.events import PromptProgress
    from localllm.status import PromptEta

    eta = PromptEta(100.0)
    assert eta.line(PromptProgress(0, 8192), 100.0) == "reading the prompt: 0/8192 tokens (0%)"
    assert eta.line(PromptProgress(512, 8192), 102.0) == "reading the prompt: 512/8192 tokens (6%), about 30 s left"
    # Each chunk of 512 tokens takes 0.5 s longer than the one before, as attention grows.
    clock, done = 102.0, 512
    for chunk_s in (2.5, 3.0, 3.5):
        clock, done = clock + chunk_s, done + 512
        line = eta.line(PromptProgress(done, 8192), clock)
    left = float(line.rsplit("about ", 1)[1].split(" s")[0])
    # What is left: 12 chunks taking 4.0, 4.5, ... 9.5 s = 81 s; a flat rate would say about 36 s.
    assert 75 <= left <= 87, line


@pytest.mark.slow
def test_a_prompt_past_4096_tokens_is_read_when_the_model_and_memory_allow_it():
    """The starter was trained on 8192 tokens and this machine holds that window many times over:
    a piped document of about 4300 tokens is answered, not refused against a 4096 default."""
    document = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(360)).encode()
    result = run_cli("run", "-m", "starter", "--json", "--max-tokens", "1", "-p", "How many lines?", stdin=document,
                     timeout=300)
    assert result.returncode == 0, result
    answer = json.loads(result.stdout)
    assert answer["usage"]["prompt_tokens"] > 4096 and answer["settings"]["n_ctx"] == 8192


def test_stop_strings_read_the_usual_escapes():
    from localllm.options import unescape

    assert unescape(r"\n\n") == "\n\n" and unescape(r"a\tb\r") == "a\tb\r"
    assert unescape(r"\\n") == "\\n", "an escaped backslash stays one backslash"
    assert unescape(r"\x41\q") == "A\\q", "an unknown escape is kept as written"
    assert unescape("plain") == "plain" and unescape("ends with \\") == "ends with \\"
