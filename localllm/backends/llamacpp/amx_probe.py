"""The AMX probe's child process: load a model with llama.cpp's default weight buffers, decode.

Run as a script by ``localllm.backends.llamacpp.amx``, never imported by localllm. If llama.cpp's AMX
kernels crash on this machine, only this process dies (by SIGILL) and that death is the verdict.
It imports nothing of localllm, so that nothing but llama.cpp can make it fail.

Prints "ok" and exits 0 when a prompt batch and single-token steps decode; exits non-zero with a
reason on stdout when llama.cpp refuses the model or a decode fails.
"""

import ctypes
import os
import sys

import llama_cpp

PROMPT_TOKENS = 32  # a batch of rows, as a prompt is evaluated
STEPS = 8  # then one token at a time, as an answer is generated


def _silent(level, text, user_data):
    pass


def main(path: str) -> int:
    callback = llama_cpp.llama_log_callback(_silent)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), llama_cpp.llama_model_default_params())
    if not model:
        print("llama.cpp could not load the probe model")
        return 3
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 256
    cparams.n_threads = cparams.n_threads_batch = min(2, os.cpu_count() or 1)
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        print("llama.cpp could not create a context for the probe model")
        return 3
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    prompt = (llama_cpp.llama_token * PROMPT_TOKENS)(*(3 + i % (n_vocab - 3) for i in range(PROMPT_TOKENS)))
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, PROMPT_TOKENS)) != 0:
        print("llama_decode failed on the prompt batch")
        return 4
    one = (llama_cpp.llama_token * 1)()
    for step in range(STEPS):
        one[0] = 3 + step
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
            print("llama_decode failed on a single token")
            return 4
    print("ok")
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)
