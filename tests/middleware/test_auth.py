"""Client keys are looked up by digest and confirmed with hmac.compare_digest; the raw key is never compared."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from megagate.asgi import presented_key
from megagate.config import ClientConfig
from megagate.middleware.auth import AuthMiddleware, ClientDirectory
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


def test_a_rebuilt_directory_keeps_each_kept_clients_window() -> None:
    before = ClientDirectory([ClientConfig(name="alice", key=ALICE, rpm=2), ClientConfig(name="bob", key="b", rpm=5)])
    alice = before.find(ALICE.encode())
    assert alice is not None and alice.window is not None
    alice.window.record(10, now=1.0)
    after = ClientDirectory(
        [
            ClientConfig(name="alice", key="sk-client-alice-rotated", rpm=1, tpm=100),
            ClientConfig(name="carol", key="c"),
        ],
        previous=before,
    )
    kept = after.find(b"sk-client-alice-rotated")
    assert kept is not None and kept.window is alice.window  # the same history, under the new limits
    assert (kept.window.rpm, kept.window.tpm) == (1, 100) and len(kept.window.requests) == 1
    carol = after.find(b"c")
    assert carol is not None and carol.window is None  # no limits, no window


async def test_a_hot_reload_is_no_way_around_a_client_limit() -> None:
    from megagate.app import Gateway
    from megagate.config import config_from_mapping
    from megagate.upstream.mock import MockResponse, MockTransport
    from tests.inprocess import COMPLETION, call

    def settings(admin: str) -> Any:
        return config_from_mapping({
            "admin_token": admin, "access_log": False,
            "clients": [{"name": "alice", "key": ALICE, "rpm": 1}],
            "upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": ["sk-up-0001"]}],
        }, environ={})  # fmt: skip

    transport = MockTransport(lambda request: MockResponse(body=[COMPLETION]))
    app = Gateway(settings("admin-one"), transport=transport, loader=lambda: settings("admin-two"))
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer " + ALICE.encode())]
    assert (await call(app, headers=headers)).status == 200
    assert (await call(app, headers=headers)).status == 429
    assert (await app.reload())[0]
    assert (await call(app, headers=headers)).status == 429  # the minute's request still counts
