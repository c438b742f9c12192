"""What an answer cost: `[prices]` (USD per million tokens, model globs, the first match wins) applied to `Usage`.

A model with no price is *unpriced*: its cost is None, never $0 (LiteLLM's unpriced models silently cost nothing,
PR #35914), so that the ledger, the metrics and the budgets can say so. Cache reads and writes cost the input price
unless their own is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from megagate.core.usage import Usage

PER = 1_000_000  # prices are per million tokens


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float:
        """USD for `usage` (reasoning tokens are output tokens, already in `usage.output`)."""
        cache_read = self.input if self.cache_read is None else self.cache_read
        cache_write = self.input if self.cache_write is None else self.cache_write
        return (usage.input * self.input + usage.cache_read * cache_read + usage.cache_write * cache_write
                + usage.output * self.output) / PER  # fmt: skip

    def worst_case(self, input_tokens: int, output_tokens: int) -> float:
        """The most a request can cost: every input token at the dearer of the input and cache-write prices."""
        dearest = max(self.input, self.cache_write if self.cache_write is not None else self.input)
        return (input_tokens * dearest + output_tokens * self.output) / PER


class UpstreamPrices:
    """Prices the upstreams' model lists gave (MegaLLM's `pricing`, in USD), for models `[prices]` does not name;
    written by the model-list refresh (endpoints/models.py), read by every PriceTable."""

    def __init__(self) -> None:
        self.prices: dict[str, Price] = {}
        self.refresh: Callable[[], Awaitable[object]] | None = None  # the model lists' refresh (set by assembly)

    def learn(self, model: str, input_per_million: float | None, output_per_million: float | None,
              currency: str | None) -> None:  # fmt: skip
        if input_per_million is None or output_per_million is None or (currency or "USD").upper() != "USD":
            return  # another currency is not converted: the model stays unpriced unless [prices] names it
        self.prices[model] = Price(input=input_per_million, output=output_per_million)


class PriceTable:
    """Prices by model glob, in the order configured, then what the upstream's model list said; configured
    lookups remembered (bounded)."""

    LIMIT = 4096

    def __init__(self, prices: Mapping[str, Price], upstream: UpstreamPrices | None = None) -> None:
        self.prices = list(prices.items())
        self.upstream = upstream
        self._known: dict[str, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        if model is None:
            return None
        if model in self._known:
            found = self._known[model]
        else:
            found = next((price for pattern, price in self.prices if fnmatch.fnmatchcase(model, pattern)), None)
            if len(self._known) < self.LIMIT:
                self._known[model] = found
        if found is None and self.upstream is not None:
            return self.upstream.prices.get(model)
        return found

    def cost(self, model: str | None, usage: Usage | None) -> float | None:
        """USD for `usage` on `model` (0 when nothing was counted); None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(usage) if usage is not None else 0.0
