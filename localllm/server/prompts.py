"""A request's prompt, as the model's chat template renders it (with tools; a grammar binding
the answer, not the thinking), checked against the window; and the grammar a required tool call needs."""

from __future__ import annotations

from ..errors import ContextOverflowError, UsageError
from .schemas import ApiError, GenerationJob


def tool_grammar(model, job: GenerationJob) -> None:
    """Tools need a template family whose calls can be parsed; a required call becomes a grammar."""
    from ..tools import plan_calls

    try:
        kind, _, grammar = plan_calls(model.chat_template, job.tools, job.tool_choice, job.grammar is not None,
                                      model.special_token)
    except UsageError as exc:
        raise ApiError(400, str(exc), "tools") from None
    if kind is None:
        job.tools = None  # tool_choice "none": the template renders no tools either
    job.call_required = grammar is not None
    job.grammar = grammar or job.grammar


def prompt_tokens(model, job: GenerationJob) -> tuple[list[int], str | None]:
    """The prompt as tokens, refused (never cut) when it does not fit the window, and the chat
    template's rendering (None for a raw prompt)."""
    prompt = None
    if job.prompt_tokens is not None:
        tokens = job.prompt_tokens
        if max(tokens) >= model.n_vocab:  # an id past the vocabulary would crash llama.cpp
            raise ApiError(400, f"'prompt' holds token ids past the vocabulary ({model.n_vocab} tokens)", "prompt")
    elif job.messages is not None:
        from ..reasoning import answer_grammar, template_variables
        from ..tools import for_template

        try:
            variables = template_variables(model.chat_template, job.think, job.reasoning_effort)
        except UsageError as exc:
            raise ApiError(400, str(exc), "think") from None
        if job.tools:
            variables["tools"] = for_template(job.tools)
        prompt = model.format_chat(job.messages, **variables)
        try:
            job.grammar = answer_grammar(model.chat_template, variables, prompt, job.grammar, job.call_required,
                                         model.special_token)
        except UsageError as exc:
            raise ApiError(400, str(exc)) from None
        tokens = model.tokenize(prompt)
    else:
        tokens = model.tokenize(job.prompt)
    if not tokens:
        raise ApiError(400, "the prompt is empty", "prompt")
    if len(tokens) >= model.n_ctx:
        raise ContextOverflowError(len(tokens), model.n_ctx, model.n_ctx_train)
    return tokens, prompt


def check_grammar(model, job: GenerationJob) -> None:
    """A grammar the engine cannot follow (a schema no document satisfies, `{"$ref": "#"}`) is
    the client's 400 now, not an error after a stream has begun."""
    if job.grammar is None:
        return
    try:
        model.check_grammar(job.grammar)
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None
