"""A generation request read from any API, handed to the one request path
(localllm.generation.request): what cannot be answered as asked is the client's 400."""

from __future__ import annotations

from dataclasses import replace

from ..generation.reasoning import from_level
from ..generation.request import Prepared, Request, RequestError, prepare
from .schemas import ApiError, GenerationJob


def prepare_job(model, job: GenerationJob) -> Prepared:
    """The prompt rendered, bound and tokenized; refused (never cut) when it does not fit the window."""
    think, effort = job.think, job.reasoning_effort
    if job.reasoning_level is not None:
        think, effort = from_level(model.chat_template, job.reasoning_level)
    request = Request(job.messages, job.prompt, job.prompt_tokens, replace(job.sampling, grammar=job.grammar),
                      think, effort, job.tools, job.tool_choice)
    try:
        return prepare(model, request)
    except RequestError as exc:
        raise ApiError(400, str(exc), exc.param) from None
