"""Prometheus metrics for `serve` at /metrics, in the text format Prometheus scrapes (as llama-server
and vLLM expose theirs): requests by route and status, tokens in and out (cached, drafted and
accepted ones too), generations by how they ended, time to first token and time per output token
as histograms, and, read from the engine when scraped, queue depth, running sequences, models
loaded and loads so far. prometheus_client keeps the numbers (thread-safe: generations end on the
engine thread) and writes the format.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.routing import Match

from ..events import Finished

# Seconds. A first token takes from tens of milliseconds (cached prompt) to minutes (a long prompt
# on a CPU); an output token from milliseconds (GPU) to a second (a big model on a CPU).
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)


class Metrics:
    def __init__(self, engine, routes) -> None:
        self.routes = routes
        registry = self.registry = CollectorRegistry()
        self.requests = Counter("localllm_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=registry)
        self.generations = Counter("localllm_generations", "Generations ended, by reason (stop, length, "
                                   "tool_calls, cancelled).", ["reason"], registry=registry)
        self.tokens = Counter("localllm_tokens", "Tokens of ended generations: prompt (all), evaluated (the prompt's "
                              "not taken from a cache), completion, drafted and accepted (speculation).", ["kind"],
                              registry=registry)
        self.ttft = Histogram("localllm_time_to_first_token_seconds", "From a generation's start to its first token.",
                              buckets=TTFT_BUCKETS, registry=registry)
        self.tpot = Histogram("localllm_time_per_output_token_seconds", "A generation's mean time per token after its first.",
                              buckets=TPOT_BUCKETS, registry=registry)
        registry.register(_EngineState(engine))

    def finished(self, event: Finished) -> None:
        """A generation ended (called on the engine thread)."""
        usage, timings = event.usage, event.timings
        self.generations.labels(event.reason).inc()
        for kind, count in (("prompt", usage.prompt_tokens), ("evaluated", usage.prompt_tokens - usage.cached_tokens),
                            ("completion", usage.completion_tokens), ("drafted", usage.drafted_tokens),
                            ("accepted", usage.accepted_tokens)):
            self.tokens.labels(kind).inc(count)
        if event.reason != "cancelled" and usage.completion_tokens:
            self.ttft.observe(timings.ttft_s)
        if usage.completion_tokens > 1:
            self.tpot.observe(timings.generation_s / (usage.completion_tokens - 1))

    def route(self, scope) -> str:
        """The route's template (bounded label values), or "other"."""
        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route.path
        return "other"

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineState:
    """What the engine holds, read when scraped."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        served = self.engine.loaded()
        yield GaugeMetricFamily("localllm_queue_depth", "Requests waiting for a slot.", value=sum(s.queued for s in served))
        yield GaugeMetricFamily("localllm_requests_running", "Sequences being generated.",
                                value=sum(s.batcher.slots - s.batcher.free_slots() for s in served))
        yield GaugeMetricFamily("localllm_models_loaded", "Models loaded now.", value=len(served))
        yield CounterMetricFamily("localllm_model_loads", "Models loaded since the server started.", value=self.engine.loads)


class CountRequests:
    """ASGI middleware, outermost: every answer counted by route and status, refusals included."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app fails before answering

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(self.metrics.route(scope), str(status)).inc()
