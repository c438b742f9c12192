"""/readyz turns 503 while no upstream key can be used, and back to 200 when one can."""

from __future__ import annotations

import pytest

from megagate.app import Gateway
from megagate.config import config_from_mapping
from megagate.core.outcome import Outcome
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def readyz(gateway: Gateway) -> int:
    recorder = Recorder()
    await gateway(http_scope("/readyz", method="GET"), receiver(b""), recorder)
    return recorder.status


async def test_readyz_follows_the_key_pool() -> None:
    clock = Clock()
    config = config_from_mapping(
        {
            "access_log": False,
            "upstreams": [{"name": "u", "base_url": "http://127.0.0.1:1", "keys": ["sk-mega-only-key-0001"]}],
        }
    )
    gateway = Gateway(config, clock=clock)
    pool = gateway.pools["u"]
    assert await readyz(gateway) == 200
    lease = await pool.acquire(10)
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after=5)  # no model: the whole key cools
    assert await readyz(gateway) == 503
    clock.now = 6.0
    assert await readyz(gateway) == 200
    lease = await pool.acquire(10)
    await pool.release(lease, Outcome.AUTH_FAILED)
    assert await readyz(gateway) == 503
    await gateway.aclose()
