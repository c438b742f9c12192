"""GET /v1/models and /v1/models/{id}: the upstreams' model lists merged, cached with a TTL, plus aliases.

A client that sends `anthropic-version` (the Anthropic SDKs, Claude Code) gets Anthropic's list format."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import msgspec

from megagate.asgi import Receive, Scope, Send, header, send_json
from megagate.config import Config, UpstreamConfig
from megagate.core.errors import Format, MegagateError, NoKeyAvailable, NotFound, UpstreamError
from megagate.core.outcome import Outcome, classify
from megagate.core.pricing import UpstreamPrices
from megagate.core.schemas import Model, ModelList, ModelPricing, model_list_decoder
from megagate.pool import KeyPool
from megagate.routing import ENDPOINTS, auth_headers, choose
from megagate.state import route_of
from megagate.upstream import Origin, Transport, base_path_of, upstream_error

logger = logging.getLogger("megagate.models")
_encoder = msgspec.json.Encoder()


class _AnthropicModel(msgspec.Struct):
    id: str
    display_name: str
    created_at: str = "1970-01-01T00:00:00Z"  # MegaLLM does not say; Anthropic's format requires a date
    type: str = "model"


class _AnthropicModelList(msgspec.Struct):
    data: list[_AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


def _anthropic_list(models: list[Model]) -> _AnthropicModelList:
    data = [_AnthropicModel(m.id, m.id) for m in models]
    return _AnthropicModelList(data, False, data[0].id if data else None, data[-1].id if data else None)


class ModelsApp:
    """Serves the merged model list. A failed refresh keeps serving the last good list."""

    def __init__(
        self,
        *,
        config: Config,
        transport: Transport,
        pools: Mapping[str, KeyPool],
        clock: Callable[[], float],
        prices: UpstreamPrices | None = None,
    ) -> None:
        self.config = config
        self.prices = prices  # what the lists say models cost, for models [prices] does not name
        self.pools = pools
        self.transport = transport
        self.clock = clock
        self._models: list[Model] | None = None
        self._expires_at = 0.0
        self._lock: anyio.Lock | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = await self.models()
        path = route_of(scope).path.rstrip("/")
        anthropic = header(scope, b"anthropic-version") is not None
        if path == "/v1/models":
            listed = _anthropic_list(models) if anthropic else ModelList(models)
            await send_json(send, 200, _encoder.encode(listed))
            return
        wanted = path.removeprefix("/v1/models/")
        for model in models:
            if model.id == wanted:
                await send_json(send, 200, _encoder.encode(_AnthropicModel(model.id, model.id) if anthropic else model))
                return
        raise NotFound(f"The model '{wanted}' does not exist.", param="model", code="model_not_found")

    async def models(self) -> list[Model]:
        if self._models is not None and self.clock() < self._expires_at:
            return self._models
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._models is None or self.clock() >= self._expires_at:
                await self._refresh()
        assert self._models is not None
        return self._models

    async def _refresh(self) -> None:
        merged: dict[str, Model] = {}
        failure: MegagateError | None = None
        for upstream in self.config.upstreams:
            try:
                listed = await self._fetch(upstream)
            except (UpstreamError, NoKeyAvailable) as exc:  # no key free now: the other upstreams still answer
                logger.warning("model list from upstream %s failed: %s", upstream.name, exc.message)
                failure = exc
                continue
            for model in listed:
                target = choose(self.config, model.id, ENDPOINTS["/v1/chat/completions"])
                if model.id not in merged and target is not None and target.upstream is upstream:
                    merged[model.id] = model
                    if self.prices is not None and isinstance(model.pricing, ModelPricing):
                        given = model.pricing
                        self.prices.learn(model.id, given.input_tokens_cost_per_million,
                                          given.output_tokens_cost_per_million, given.currency)  # fmt: skip
        if failure is not None and not merged and self._models is not None:
            self._expires_at = self.clock() + min(self.config.models_cache_ttl, 10.0)  # retry soon, serve stale
            return
        if failure is not None and not merged:
            raise failure
        for name in (self.config.default_model, *self.config.aliases):
            merged.setdefault(name, Model(id=name, owned_by="megagate"))
        self._models = list(merged.values())
        self._expires_at = self.clock() + self.config.models_cache_ttl

    async def _fetch(self, upstream: UpstreamConfig) -> list[Model]:
        """The upstream's list, asked with a key leased from its pool like any request (it costs the key a
        request of its budget), released with the outcome."""
        origin = Origin.from_url(upstream.origin_url)
        target = base_path_of(upstream.origin_url) + b"/v1/models"
        pool = self.pools.get(upstream.name)
        lease = await pool.acquire(0) if pool is not None else None
        fmt: Format = "anthropic" if upstream.format == "anthropic" else "openai"
        headers = [(b"accept", b"application/json"), *auth_headers(fmt, lease.key if lease else None)]
        outcome = Outcome.CANCELLED
        try:
            async with self.transport.stream(b"GET", origin, target, headers, b"") as response:
                body = await response.read(8 * 1024 * 1024)
            if response.status >= 400:
                failure = upstream_error(response.status, body, None, (lease.key,) if lease else ())
                outcome = classify(failure)
                raise failure
            outcome = Outcome.SUCCESS
        except UpstreamError as error:
            outcome = classify(error)
            raise
        finally:
            if pool is not None and lease is not None:
                with anyio.CancelScope(shield=True):
                    await pool.release(lease, outcome)
        try:
            return model_list_decoder.decode(body).data
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"upstream {upstream.name} sent an unreadable model list: {exc}") from None
