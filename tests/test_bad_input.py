"""Bad files and bad options: one clear line on stderr, a documented exit code, no traceback."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error, invoke, run_cli

EXIT_USAGE, EXIT_NOT_FOUND, EXIT_LOAD, EXIT_CONTEXT = 2, 3, 4, 5


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    result = invoke("run", "-m", str(missing), "hi")
    assert_one_line_error(result, EXIT_NOT_FOUND, str(missing), "no such file")


def test_unknown_model_name():
    result = invoke("run", "-m", "no-such-model", "hi")
    assert_one_line_error(result, EXIT_NOT_FOUND, "no-such-model", "localllm list")


def test_directory(tmp_path):
    result = invoke("run", "-m", str(tmp_path), "hi")
    assert_one_line_error(result, EXIT_LOAD, str(tmp_path), "directory")


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.touch()
    result = invoke("run", "-m", str(empty), "hi")
    assert_one_line_error(result, EXIT_LOAD, str(empty), "empty")


def test_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 100)
    result = invoke("run", "-m", str(fake), "hi")
    assert_one_line_error(result, EXIT_LOAD, str(fake), "not a GGUF file")


@pytest.mark.slow
def test_truncated_gguf(tmp_path, starter_gguf):
    truncated = tmp_path / "truncated.gguf"
    with starter_gguf.open("rb") as src:
        truncated.write_bytes(src.read(starter_gguf.stat().st_size // 2))
    result = invoke("run", "-m", str(truncated), "hi")
    assert_one_line_error(result, EXIT_LOAD, str(truncated), "truncated")  # found by the header check, before llama.cpp


def test_truncated_header(tmp_path, starter_gguf):
    truncated = tmp_path / "header.gguf"
    with starter_gguf.open("rb") as src:
        truncated.write_bytes(src.read(1000))
    result = invoke("run", "-m", str(truncated), "hi")
    assert_one_line_error(result, EXIT_LOAD, str(truncated), "invalid or truncated GGUF file")


def test_invalid_utf8_on_stdin():
    result = invoke("run", "-m", "starter", stdin=b"caf\xe9 au lait")
    assert_one_line_error(result, EXIT_USAGE, "stdin is not valid UTF-8", "0xe9", "offset 3")


@pytest.mark.parametrize("args", [["run", "-m", "starter"], ["run", "-m", "starter", "   "], ["run", "-m", "starter", "-p", ""]])
def test_empty_prompt(args):
    assert_one_line_error(invoke(*args), EXIT_USAGE, "prompt is empty")


def test_prompt_given_twice():
    assert_one_line_error(invoke("run", "-p", "a", "b"), EXIT_USAGE, "give the prompt once")


@pytest.mark.slow
def test_prompt_longer_than_context():
    result = run_cli("run", "-m", "starter", "--ctx", "256", "word " * 400)
    assert_one_line_error(result, EXIT_CONTEXT, "context window is 256", "--ctx")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--max-tokens", "0"),
        ("--max-tokens", "-3"),
        ("--temperature", "-1"),
        ("--top-p", "0"),
        ("--ctx", "-5"),
        ("--threads", "0"),
        ("--gpu-layers", "-2"),
        ("--seed", "-1"),
    ],
)
def test_out_of_range_options(option, value):
    result = invoke("run", "-m", "starter", option, value, "hi")
    assert result.returncode == EXIT_USAGE
    assert option in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--ctx", "64", "256"),  # was silently rounded up to 256
        ("--ctx", "4294967301", "context size"),  # wrapped in C, then llama.cpp aborted
        ("--threads", "100000", "thread count must be 1 to 512"),
        ("--temperature", "nan", "temperature must be a finite number"),
        ("--temperature", "inf", "temperature must be a finite number"),
        ("--top-p", "nan", "top-p must be a finite number"),
        ("--repeat-penalty", "inf", "repeat-penalty must be a finite number"),
    ],
)
def test_values_llama_cpp_cannot_take_are_refused_before_loading(option, value, says):
    assert_one_line_error(invoke("run", "-m", "starter", option, value, "hi"), EXIT_USAGE, says)


@pytest.mark.parametrize("command", [["chat"], ["plan", "starter"]])
def test_the_same_context_minimum_everywhere(command):
    result = invoke(*command, "--ctx", "64")
    assert result.returncode == EXIT_USAGE and "256" in result.stderr


def test_library_options_are_validated_when_made():
    from localllm import LoadOptions, SamplingOptions, UsageError

    with pytest.raises(UsageError, match="flash attention"):
        LoadOptions(flash_attn="auto")
    with pytest.raises(UsageError, match="finite"):
        SamplingOptions(temperature=float("nan"))
    with pytest.raises(UsageError, match="finite"):
        SamplingOptions(min_p=float("-inf"))


def test_corrupt_settings_file(isolated_home):
    config = isolated_home / "localllm" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("{not json")
    result = invoke("run", "hi")
    assert_one_line_error(result, 1, str(config), "not valid JSON")
    assert config.read_text() == "{not json", "a broken settings file must be left for the user to fix"


@pytest.mark.parametrize("content, says", [
    (b'{"chat": "hot"}', '"chat" must be an object'),
    (b'{"chat": {"temperature": "hot"}}', '"chat.temperature" must be a whole number or a number'),
    (b'{"model_dirs": "/tmp"}', '"model_dirs" must be a list'),
    (b'{"default_model": 3}', '"default_model" must be text'),
    (b'{"chat": {"system": "caf\xe9"}}', "not UTF-8"),
])
def test_a_wrongly_typed_or_encoded_settings_file_is_named(isolated_home, content, says):
    config = isolated_home / "localllm" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_bytes(content)
    for command in (["run", "hi"], ["list"]):
        result = invoke(*command)
        assert_one_line_error(result, 1, str(config), says)
        assert "unexpected error" not in result.stderr
    assert config.read_bytes() == content


def test_an_unwritable_cache_does_not_break_plan_show_or_list(isolated_home, tmp_path):
    # Below a plain file no folder can be made, even by root (as CI runs): the cache is an
    # optimisation, and every command works without it.
    (tmp_path / "a-file").write_text("")
    env = {"LOCALLLM_CACHE": str(tmp_path / "a-file" / "cache")}
    for command in (["plan", "starter"], ["show", "starter"], ["list"]):
        result = invoke(*command, env=env)
        assert result.returncode == 0, result


@pytest.mark.slow
def test_an_unwritable_cache_does_not_break_run(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli("run", "-t", "0", "--max-tokens", "2", "hi", env={"LOCALLLM_CACHE": str(tmp_path / "a-file" / "cache")})
    assert result.returncode == 0, result


def test_chat_without_a_terminal_says_to_use_run():
    assert_one_line_error(invoke("chat"), 2, "needs a terminal", "localllm run")


def test_escape_sequences_from_files_never_reach_the_terminal(tmp_path, starter_gguf):
    import json
    import os

    evil = "evil\x1b]0;pwned\x07\x1b[2J\u202e.gguf"
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(starter_gguf, folder / evil)
    listed = invoke("list", "--add-dir", str(folder))
    shown = invoke("show", str(folder / evil))
    planned = invoke("plan", str(folder / evil))
    missing = invoke("run", "-m", str(tmp_path / evil), "hi")
    for result in (listed, shown, planned, missing):
        for stream in (result.stdout, result.stderr):
            assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream, result
    assert "evil" in listed.stdout and "evil" in planned.stdout and "evil" in missing.stderr
    assert evil in {m["name"] for m in json.loads(invoke("list", "--json").stdout)}, "JSON escapes it; the name is kept"


def _limited(*args: str):
    """The installed command under a 3 GiB address-space limit: unbounded allocation fails fast."""
    import resource
    import subprocess

    from conftest import LOCALLLM, Result

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([*LOCALLLM, *args], capture_output=True, timeout=60, preexec_fn=limit, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["huge-array", "huge-string", "huge-tensor-count", "huge-string-array", "huge-template",
                                  "no-blocks"])
@pytest.mark.parametrize("command", [["show"], ["plan"], ["run", "-t", "0", "--max-tokens", "2", "-m"]])
def test_a_lying_gguf_header_is_refused_naming_the_file(tmp_path, case, command):
    import hostile_gguf

    path = hostile_gguf.write(tmp_path, case)
    args = [*command, str(path)] + (["hi"] if command[0] == "run" else [])
    result = _limited(*args)
    assert_one_line_error(result, EXIT_LOAD, f"{case}.gguf")


@pytest.mark.slow
def test_one_bad_file_in_a_scanned_folder_does_not_break_list(tmp_path, starter_gguf):
    import json
    import os

    import hostile_gguf

    folder = tmp_path / "downloads"
    folder.mkdir()
    os.link(starter_gguf, folder / "good-Q4_1.gguf")
    hostile_gguf.write(folder, "huge-array")
    (folder / "huge-array.gguf").write_bytes(hostile_gguf.CASES["huge-array"] + b"\0" * (200 << 20))  # larger than any
    result = _limited("list", "--add-dir", str(folder), "--json")
    assert result.returncode == 0, result
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["huge-array.gguf"]["fit"] == "error" and "huge-array.gguf" in rows["huge-array.gguf"]["error"]
    assert rows["good-Q4_1.gguf"]["fit"] != "error"
    assert "warning:" in result.stderr and "huge-array.gguf cannot be used" in result.stderr
    assert run_cli("run", "-t", "0", "--max-tokens", "2", "hi").returncode == 0, "a broken file is never the default"


@pytest.mark.slow
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("run", "-m", str(fifo), "hi", timeout=20), EXIT_LOAD, "not a regular file")


def test_values_checked_against_the_model_and_the_machine():
    import os

    cpus = len(os.sched_getaffinity(0))
    if 4 * cpus + 1 <= 512:  # past 512 (a 128-CPU machine) ggml's own limit answers first
        assert_one_line_error(invoke("run", "-m", "starter", "--threads", str(4 * cpus + 1), "hi"), EXIT_USAGE,
                              "more than 4 per CPU")
    beyond = invoke("run", "-m", "starter", "--ctx", "16384", "hi")  # the starter was trained on 8192
    assert_one_line_error(beyond, EXIT_USAGE, "trained on a 8192-token context", "--load-anyway")


@pytest.mark.slow
def test_a_context_past_the_trained_one_loads_when_asked():
    forced = run_cli("run", "-m", "starter", "--ctx", "16384", "--load-anyway", "-t", "0", "--max-tokens", "2", "hi")
    assert forced.returncode == 0, forced


def test_names_and_folders_the_system_refuses_get_a_documented_code(tmp_path):
    too_long = "a" * 5000 + ".gguf"
    assert_one_line_error(invoke("run", "-m", too_long, "hi"), EXIT_NOT_FOUND, "model not found")
    (tmp_path / "a-file").write_text("")
    below_a_file = str(tmp_path / "a-file" / "home")
    for command in (["default", "starter"], ["list", "--add-dir", str(tmp_path)]):
        result = invoke(*command, env={"LOCALLLM_HOME": below_a_file})
        assert_one_line_error(result, 1, "settings", below_a_file)
        assert "unexpected error" not in result.stderr
