"""Prices: model globs in order, cache prices defaulting to the input price, and an unpriced model costing None."""

from __future__ import annotations

import pytest

from megagate.core.pricing import Price, PriceTable
from megagate.core.usage import Usage

OPUS = Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75)
MINI = Price(input=0.15, output=0.60, cache_read=0.075)


def test_the_first_matching_glob_prices_every_kind_of_token() -> None:
    table = PriceTable({"claude-opus-4*": OPUS, "claude-*": Price(input=3, output=15), "gpt-4o-mini": MINI})
    usage = Usage(input=10, cache_read=1000, cache_write=50, output=5, reasoning=2)
    assert table.cost("claude-opus-4-1", usage) == pytest.approx((10 * 15 + 1000 * 1.5 + 50 * 18.75 + 5 * 75) / 1e6)
    assert table.cost("claude-sonnet-4", Usage(input=1_000_000)) == pytest.approx(3.0)
    mini = table.cost("gpt-4o-mini", Usage(input=100, cache_read=100, cache_write=100, output=100))
    assert mini == pytest.approx((100 * 0.15 + 100 * 0.075 + 100 * 0.15 + 100 * 0.60) / 1e6)  # write: input price


def test_an_unpriced_model_costs_none_never_zero() -> None:
    table = PriceTable({"gpt-*": MINI})
    assert table.cost("llama-3", Usage(input=5)) is None and table.price("llama-3") is None
    assert table.cost("gpt-4o", None) == 0.0  # priced, and nothing was counted (a failed attempt)
    assert PriceTable({}).cost("gpt-4o", Usage(input=5)) is None


def test_the_worst_case_takes_the_dearer_input_price_and_every_output_token() -> None:
    assert OPUS.worst_case(1000, 100) == pytest.approx((1000 * 18.75 + 100 * 75) / 1e6)
    assert MINI.worst_case(1000, 100) == pytest.approx((1000 * 0.15 + 100 * 0.60) / 1e6)
