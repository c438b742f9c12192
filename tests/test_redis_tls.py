"""Managed Redis as it is met in production: TLS with the provider's CA (made here by trustme), an ACL user, a
client certificate, a unix socket; and a wrong CA said in one line naming the host, with requests meeting the
configured policy rather than a traceback."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
import trustme

from megagate.app import create_app
from megagate.config import config_from_mapping
from megagate.core.errors import RedisError
from megagate.pool.resp import RedisClient
from megagate.upstream.mock import MockResponse, MockTransport
from tests.conftest import RedisServer
from tests.inprocess import COMPLETION, call

pytestmark = pytest.mark.anyio
ACL = ["--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"]


class Certificates:
    def __init__(self, tmp: Path) -> None:
        ca, self.ca = trustme.CA(), tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert, self.server_key = tmp / "server.pem", tmp / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = ca.issue_cert("megagate-client")
        self.client_cert, self.client_key = tmp / "client.pem", tmp / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        self.other_ca = tmp / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca))

    def server_args(self, clients: str) -> list[str]:
        return ["--tls-cert-file", str(self.server_cert), "--tls-key-file", str(self.server_key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", clients]  # fmt: skip


def gateway_on(url: str) -> Any:
    settings = {
        "access_log": False,
        "usage": {"store": "off"},
        "timeouts": {"pool": 2.0},
        "pool": {"store": "redis", "redis_url": url, "prefix": secrets.token_hex(4)},
        "upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": ["sk-mega-tls-aaaa1111"]}],
    }
    transport = MockTransport(lambda _: MockResponse(body=[COMPLETION]))
    return create_app(config_from_mapping(settings, environ={}), transport=transport)


async def served_through_redis(url: str) -> None:
    gateway = gateway_on(url)
    async with gateway.running():
        assert (await call(gateway)).status == 200
        keys = await gateway.redis.execute("KEYS", "*")
        prefix = gateway.config.pool.prefix
        assert any(k.startswith(b"{" + prefix.encode() + b"}:up:key-") for k in keys), keys  # one hash slot


async def test_tls_with_the_providers_ca_and_an_acl_user(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path)
    server = RedisServer(tmp_path, *certificates.server_args("no"), *ACL, tls=True)
    try:
        await served_through_redis(f"rediss://alice:s3cret@127.0.0.1:{server.port}/0?ssl_ca_certs={certificates.ca}")
        # verification off, for a provider whose certificate names no usable host
        async with RedisClient.from_url(f"rediss://alice:s3cret@127.0.0.1:{server.port}?ssl_cert_reqs=none") as c:
            assert await c.execute("PING") == b"PONG"
    finally:
        server.stop()


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path)
    server = RedisServer(tmp_path, *certificates.server_args("yes"), tls=True)
    try:
        url = (f"rediss://127.0.0.1:{server.port}?ssl_ca_certs={certificates.ca}&ssl_certfile="
               f"{certificates.client_cert}&ssl_keyfile={certificates.client_key}")  # fmt: skip
        await served_through_redis(url)
        async with RedisClient.from_url(f"rediss://127.0.0.1:{server.port}?ssl_ca_certs={certificates.ca}") as c:
            with pytest.raises(RedisError, match=r"127\.0\.0\.1"):  # no client certificate: refused
                await c.execute("PING")
    finally:
        server.stop()


async def test_a_wrong_ca_is_one_line_naming_the_host(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certificates = Certificates(tmp_path)
    server = RedisServer(tmp_path, *certificates.server_args("no"), tls=True)
    logger = logging.getLogger("megagate")
    logger.addHandler(caplog.handler)
    try:
        gateway = gateway_on(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certificates.other_ca}")
        async with gateway.running():
            answer = await call(gateway)
        assert answer.status == 503 and b"Traceback" not in answer.body
        said = [r.getMessage() for r in caplog.records if "does not answer yet" in r.getMessage()]
        assert len(said) == 1 and "\n" not in said[0]
        assert f"cannot connect to Redis at 127.0.0.1:{server.port}" in said[0] and "CERTIFICATE_VERIFY" in said[0]
    finally:
        logger.removeHandler(caplog.handler)
        server.stop()


async def test_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, "--unixsocket", str(socket_path), "--unixsocketperm", "700", "--requirepass", "pw")
    try:
        await served_through_redis(f"unix://:pw@{socket_path}?db=1")
        await served_through_redis(f"unix://{socket_path}?db=2&password=pw")
    finally:
        server.stop()
