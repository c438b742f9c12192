"""What an answer cost: `[prices]` (USD per million tokens, model globs, the first match wins) applied to `Usage`.

A model with no price is *unpriced*: its cost is None, never $0 (LiteLLM's unpriced models silently cost nothing,
PR #35914), so that the ledger, the metrics and the budgets can say so. Cache reads and writes cost the input price
unless their own is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

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


class PriceTable:
    """Prices by model glob, in the order configured; lookups remembered (bounded)."""

    LIMIT = 4096

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = list(prices.items())
        self._known: dict[str, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        if model is None:
            return None
        if model in self._known:
            return self._known[model]
        found = next((price for pattern, price in self.prices if fnmatch.fnmatchcase(model, pattern)), None)
        if len(self._known) < self.LIMIT:
            self._known[model] = found
        return found

    def cost(self, model: str | None, usage: Usage | None) -> float | None:
        """USD for `usage` on `model` (0 when nothing was counted); None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(usage) if usage is not None else 0.0
