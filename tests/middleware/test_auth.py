"""Client keys are looked up by digest and confirmed with hmac.compare_digest; the raw key is never compared."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from megagate.config import ClientConfig
from megagate.middleware.auth import AuthMiddleware, ClientDirectory, presented_key
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio
ALICE = "sk-client-alice-0001"


def test_lookup_is_by_digest_and_confirmed_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    digest = hashlib.sha256(ALICE.encode()).hexdigest()
    directory = ClientDirectory(
        [ClientConfig(name="alice", key_sha256=digest.upper()), ClientConfig(name="b", key="x")]
    )
    found = directory.find(ALICE.encode())
    assert found is not None and found.name == "alice"
    assert compared == [(digest, digest)]  # digests, never the raw key
    assert directory.find(b"sk-client-alice-0002") is None
    assert ALICE not in repr(vars(directory))  # only digests are kept


@pytest.mark.parametrize(
    "headers, key",
    [
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer  abc ")], b"abc"),
        ([(b"x-api-key", b"abc")], b"abc"),
        ([(b"authorization", b"Bearer "), (b"x-api-key", b"abc")], b"abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([], None),
    ],
)
def test_the_key_comes_from_bearer_or_x_api_key(headers: list[tuple[bytes, bytes]], key: bytes | None) -> None:
    assert presented_key(http_scope("/v1/models", headers=headers)) == key


async def test_only_v1_routes_need_a_key_and_open_mode_needs_none() -> None:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = AuthMiddleware(ok, clients=[ClientConfig(name="alice", key=ALICE)])
    for path, status in [("/v1/models", 401), ("/healthz", 200)]:
        recorder = Recorder()
        await guarded(http_scope(path, method="GET", headers=[]), receiver(b""), recorder)
        assert recorder.status == status
    recorder = Recorder()
    await AuthMiddleware(ok, clients=[])(http_scope("/v1/models", method="GET", headers=[]), receiver(b""), recorder)
    assert recorder.status == 200
