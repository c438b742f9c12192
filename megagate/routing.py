"""The one place that decides where an attempt goes: which upstream, in which format, at which path.

A request arrives on an `Endpoint` (what it asks for, in which client format). `choose` turns (model, endpoint)
into a `Target`: the first upstream serving the model in the client's own format, else the first serving it at all
(megagate then translates), and the upstream path for that format. An endpoint only an upstream of one format can
serve (Anthropic's token count) has no target elsewhere: `choose` says None and the route answers locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megagate.config import Config, UpstreamConfig
from megagate.core.anthropic import ANTHROPIC_VERSION
from megagate.core.errors import Format

Operation = Literal["chat", "count_tokens", "embeddings"]
UPSTREAM_PATHS: dict[Format, bytes] = {
    "openai": b"/v1/chat/completions",
    "anthropic": b"/v1/messages",
    "responses": b"/v1/responses",
}
COUNT_TOKENS_PATH = b"/v1/messages/count_tokens"
EMBEDDINGS_PATH = b"/v1/embeddings"
# For each client format, the upstream formats megagate can serve it from, best (no translation) first.
SERVED_FROM: dict[Format, tuple[Format, ...]] = {
    "openai": ("openai", "anthropic"),
    "anthropic": ("anthropic", "openai"),
    "responses": ("responses", "openai", "anthropic"),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a client route asks for: an `operation` in the client's `format` (whose envelope its errors use)."""

    format: Format
    operation: Operation = "chat"


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint("openai"),
    "/v1/messages": Endpoint("anthropic"),
    "/v1/messages/count_tokens": Endpoint("anthropic", "count_tokens"),
    "/v1/responses": Endpoint("responses"),
    "/v1/embeddings": Endpoint("openai", "embeddings"),
}


def endpoint_format(path: str) -> Format:
    """The format a path speaks, and so the envelope of its errors: its endpoint's, else Anthropic's for anything
    under `/v1/messages` and OpenAI's for the rest (megagate's own routes answer in OpenAI's shape)."""
    endpoint = ENDPOINTS.get(path)
    if endpoint is not None:
        return endpoint.format
    return "anthropic" if path.startswith("/v1/messages") else "openai"


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt is sent: the upstream, the format spoken to it, and the path."""

    upstream: UpstreamConfig
    format: Format
    path: bytes


def speaks(upstream: UpstreamConfig, fmt: Format) -> bool:
    return fmt in upstream.formats


def choose(config: Config, model: str, endpoint: Endpoint) -> Target | None:
    """The target for `model` on `endpoint`, or None when no upstream can serve it."""
    serving = [u for u in config.upstreams if u.serves(model)]
    if endpoint.operation == "count_tokens":  # only an Anthropic-format upstream counts tokens; no translation
        upstream = next((u for u in serving if speaks(u, "anthropic")), None)
        return Target(upstream, "anthropic", COUNT_TOKENS_PATH) if upstream is not None else None
    if endpoint.operation == "embeddings":  # only the OpenAI format has embeddings
        upstream = next((u for u in serving if speaks(u, "openai")), None)
        return Target(upstream, "openai", EMBEDDINGS_PATH) if upstream is not None else None
    # the first upstream (config order) in the best format the client can be served from
    for fmt in SERVED_FROM[endpoint.format]:
        for upstream in serving:
            if speaks(upstream, fmt):
                return Target(upstream, fmt, UPSTREAM_PATHS[fmt])
    return None


class Routes:
    """`choose` over one configuration, remembered per (model, endpoint): matching every upstream's model patterns
    on every attempt cost a few percent of a plain request. Model names come from clients, so the memory is
    bounded (cleared when full). A reload builds a new one with its new configuration."""

    LIMIT = 4096

    def __init__(self, config: Config) -> None:
        self.config = config
        self._known: dict[tuple[str, Endpoint], Target | None] = {}

    def __call__(self, model: str, endpoint: Endpoint) -> Target | None:
        key = (model, endpoint)
        if key in self._known:
            return self._known[key]
        if len(self._known) >= self.LIMIT:
            self._known.clear()
        target = self._known[key] = choose(self.config, model, endpoint)
        return target


def auth_headers(fmt: Format, key: str | None, *, version: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """How a pool key is presented to an upstream of format `fmt` (the only writer of upstream credentials):
    `x-api-key` plus `anthropic-version` (the client's own, else ours) to Anthropic's format, a Bearer token to
    OpenAI's."""
    if fmt == "anthropic":
        headers = [(b"anthropic-version", version or ANTHROPIC_VERSION)]
        return [*headers, (b"x-api-key", key.encode())] if key else headers
    return [(b"authorization", b"Bearer " + key.encode())] if key else []
