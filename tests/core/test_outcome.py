"""One classifier: every failure maps to one Outcome, and retry and fallback read only that."""

from __future__ import annotations

import pytest

from megagate.core.errors import (
    InvalidRequest,
    MegagateError,
    NoKeyAvailable,
    NoUsableKey,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)
from megagate.core.outcome import RETRIED_ON_ANOTHER_KEY, Outcome, classify, fallback_switch

CASES = [
    (UpstreamStatus(429, "x"), Outcome.RATE_LIMITED, True, "rate_limit"),
    (UpstreamStatus(401, "x"), Outcome.AUTH_FAILED, True, "error"),
    (UpstreamStatus(403, "x"), Outcome.AUTH_FAILED, True, "error"),
    (UpstreamStatus(408, "x"), Outcome.TIMEOUT, False, "error"),  # the model is slow: another key waits as long
    (UpstreamStatus(500, "x"), Outcome.SERVER_ERROR, True, "error"),
    (UpstreamStatus(529, "x"), Outcome.SERVER_ERROR, True, "error"),
    (UpstreamStatus(400, "x"), Outcome.CLIENT_ERROR, False, None),
    (UpstreamStatus(404, "x"), Outcome.CLIENT_ERROR, False, None),
    (UpstreamStatus(422, "x"), Outcome.CLIENT_ERROR, False, None),
    (UpstreamTimeout("x"), Outcome.TIMEOUT, False, "error"),
    (UpstreamConnectError("x"), Outcome.CONNECT_ERROR, True, "error"),
    (UpstreamProtocolError("x"), Outcome.SERVER_ERROR, True, "error"),
    (NoKeyAvailable("x"), Outcome.RATE_LIMITED, True, "rate_limit"),
    (NoUsableKey("x"), Outcome.AUTH_FAILED, True, "error"),
    (InvalidRequest("x"), Outcome.CLIENT_ERROR, False, None),
]


@pytest.mark.parametrize(("error", "outcome", "retried", "switch"), CASES)
def test_each_failure_has_one_outcome_that_retry_and_fallback_agree_on(
    error: MegagateError, outcome: Outcome, retried: bool, switch: str | None
) -> None:
    assert classify(error) is outcome
    assert (outcome in RETRIED_ON_ANOTHER_KEY) is retried
    assert fallback_switch(outcome) == switch
