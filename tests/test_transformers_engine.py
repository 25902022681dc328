"""The full-precision engine on the CPU: a real safetensors checkpoint (the starter, exported by
transformers), loaded as users load theirs, against plain transformers generate()."""

from __future__ import annotations

import json
import os

import pytest
from conftest import assert_one_line_error, run_cli

from localllm import SamplingOptions, collect, load_model
from localllm.backends.transformers.engine import choose_dtype
from localllm.errors import UsageError


GREEDY = SamplingOptions(temperature=0, max_tokens=24)
QUESTION = [{"role": "user", "content": "Name three colours."}]


def plain_generate(folder, dtype: str, messages, max_new_tokens: int) -> str:
    """What transformers itself answers, greedy, in the same dtype and threads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_the_library_matches_plain_generate_and_reuses_its_cache(starter_checkpoint):
    # float32: in bfloat16 a prompt's last position comes out of a one-row product when the rest
    # is cached and of a many-row one when not, and on CPUs with AMX those round differently
    # enough to flip a greedy token; exact repeats are a float32 property on every CPU.
    with load_model(starter_checkpoint, n_threads=2, dtype="float32") as model:
        assert model.engine == "transformers" and model.dtype == "float32"
        first = collect(model.chat(QUESTION, GREEDY))
        assert first.text == plain_generate(starter_checkpoint, model.dtype, QUESTION, 24)
        again = collect(model.chat(QUESTION, GREEDY))
        assert again.text == first.text
        assert again.finished.usage.cached_tokens == first.finished.usage.prompt_tokens - 1
        stopped = collect(model.chat(QUESTION, SamplingOptions(temperature=0, max_tokens=24, stop=(first.text[5:9],))))
        assert stopped.finished.reason == "stop" and stopped.text == first.text[:5]
        sampled = [collect(model.chat(QUESTION, SamplingOptions(temperature=0.9, seed=5, max_tokens=12))).text for _ in range(2)]
        assert sampled[0] == sampled[1], "a seed repeats a sampled answer"


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_schema_binds_the_answer_as_on_llama_cpp(starter_checkpoint, temperature):
    import jsonschema

    from localllm.generation.constraints import json_grammar

    schema = {"type": "object", "properties": {"colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                           "minItems": 3, "maxItems": 3}}, "required": ["colours"]}
    with load_model(starter_checkpoint, n_threads=2) as model:
        done = collect(model.chat(QUESTION, SamplingOptions(temperature=temperature, seed=3, max_tokens=60,
                                                            grammar=json_grammar(schema))))
    assert done.finished.reason == "stop", done
    jsonschema.validate(json.loads(done.text), schema)
    # Forced tokens ("colours", the brackets) are evaluated with the sampled ones and counted as output.
    assert done.finished.usage.completion_tokens >= len(json.loads(done.text)["colours"]) + 3


@pytest.mark.slow
def test_run_picks_the_engine_from_the_format_and_reports_it(starter_checkpoint):
    result = run_cli("run", "-m", str(starter_checkpoint), "--json", "-t", "0", "--max-tokens", "24", "--threads", "2",
                     "Name three colours.")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["settings"]["engine"] == "transformers" and out["settings"]["dtype"] in ("bfloat16", "float32")
    assert out["text"] == plain_generate(starter_checkpoint, out["settings"]["dtype"], QUESTION, 24)
    assert "Loading weights" not in result.stderr, "transformers' progress bars stay off stderr"
    streamed = run_cli("run", "-m", str(starter_checkpoint), "-t", "0", "--max-tokens", "24", "--threads", "2",
                       "--dtype", "float32", "Name three colours.")
    assert streamed.returncode == 0 and streamed.stdout.strip()


@pytest.mark.slow
def test_an_engine_that_cannot_open_the_model_is_a_usage_error(starter_checkpoint, starter_gguf):
    assert_one_line_error(run_cli("run", "-m", str(starter_gguf), "--engine", "transformers", "Hi"), 2,
                          "transformers engine cannot load a .gguf file")
    assert_one_line_error(run_cli("run", "-m", str(starter_checkpoint), "--engine", "llamacpp", "Hi"), 2,
                          "llamacpp engine cannot load a safetensors folder")


@pytest.mark.slow
def test_without_the_full_extra_one_line_says_how_to_install_it(starter_checkpoint, tmp_path):
    blocked = tmp_path / "blocked"
    (blocked / "torch").mkdir(parents=True)
    (blocked / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    result = run_cli("run", "-m", str(starter_checkpoint), "Hi",
                     env={"PYTHONPATH": f"{blocked}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert_one_line_error(result, 2, "pipx install 'localllm[full]'")


@pytest.mark.parametrize("asked, checkpoint, device, features, chosen", [
    (None, "bfloat16", "cpu", ("avx512f", "avx512_bf16"), "bfloat16"),
    (None, "bfloat16", "cpu", ("avx2",), "float32"),  # emulated bf16 is slower than float32
    (None, "float16", "cpu", ("avx2",), "float32"),
    (None, "float16", "cuda", (), "float16"),
    ("float32", "bfloat16", "cuda", (), "float32"),
    (None, None, "cuda", (), "float32"),
])
def test_dtype_choice(asked, checkpoint, device, features, chosen):
    assert choose_dtype(asked, checkpoint, device, features) == chosen


@pytest.mark.slow
def test_a_checkpoint_with_a_bad_config_is_refused_before_torch_reads_it(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2]")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    assert_one_line_error(run_cli("run", "-m", str(folder), "Hi"), 4, "config.json has no model_type")
    (folder / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 1}')
    (folder / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    assert_one_line_error(run_cli("run", "-m", str(folder), "Hi"), 4, "safetensors header claims")
    (folder / "model.safetensors").write_bytes((40).to_bytes(8, "little") + b'{"w": {"dtype": "F16", "shape": [-1]}}  ')
    assert_one_line_error(run_cli("run", "-m", str(folder), "Hi"), 4, "describes 'w' wrongly")
    with pytest.raises(UsageError, match="dtype must be one of"):
        load_model(folder, dtype="int3")


@pytest.mark.slow
def test_decoding_leaves_a_core_that_another_process_keeps_busy(starter_checkpoint, capfd):
    """PyTorch's threads stall on a busy core as llama.cpp's do (the starter: 2.1 tokens/s on 2
    threads beside a busy loop, 17.7 on 1): with no --threads the count adapts while decoding."""
    import subprocess
    import sys

    assert len(os.sched_getaffinity(0)) >= 2, "the project's machines have 2 cores; this needs them"
    with load_model(starter_checkpoint, dtype="float32", verbose=True) as model:
        assert model.n_threads == 2 and model.threads_in_use == 2
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy = collect(model.generate("Once upon a time", SamplingOptions(temperature=0, max_tokens=300, ignore_eos=True)))
        finally:
            hog.kill()
            hog.wait()
        assert model.threads_in_use == 1
    said = [line for line in capfd.readouterr().err.splitlines() if line.startswith("localllm: threads:")]
    assert any("keeping 1 threads" in line for line in said), said
    assert busy.finished.usage.completion_tokens == 300 and busy.text
