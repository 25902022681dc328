"""localllm: run open language models on this machine.

The Python API the ``localllm`` command is built on::

    import localllm

    with localllm.load_model("starter", n_ctx=2048) as model:
        for event in model.prompt("Why is the sky blue?", sampling=localllm.SamplingOptions(temperature=0)):
            if isinstance(event, localllm.Token):
                print(event.text, end="", flush=True)

``model.chat(messages)`` takes a whole conversation, ``model.complete(text)`` returns the finished
answer, ``model.generate(text_or_tokens)`` continues raw text with no chat template.
``localllm.engine.Engine`` is what `chat` and `serve` run on: one thread for every llama.cpp
call, with several requests decoded together.
"""

__version__ = "0.1.0"

from .errors import (
    ContextOverflowError,
    GenerationError,
    LocalLLMError,
    ModelLoadError,
    ModelNotFoundError,
    UsageError,
)
from .events import (
    Event,
    Finished,
    PromptProgress,
    Reasoning,
    Timings,
    Token,
    ToolCalls,
    Usage,
)
from .model import Completion, Model, collect, load_model
from .options import LoadOptions, SamplingOptions
from .registry import InstalledModel, installed_models

__all__ = [
    "Completion",
    "ContextOverflowError",
    "Event",
    "Finished",
    "GenerationError",
    "InstalledModel",
    "LoadOptions",
    "LocalLLMError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptProgress",
    "Reasoning",
    "SamplingOptions",
    "Timings",
    "Token",
    "ToolCalls",
    "Usage",
    "UsageError",
    "collect",
    "installed_models",
    "load_model",
]
