"""Redis URLs as operators copy them from a provider's console (redis-py's query names), and one-line errors."""

from __future__ import annotations

import pytest

from megagate.core.redis_url import RedisTarget, RedisURLError, parse_redis_url


def test_the_forms_a_provider_hands_out() -> None:
    assert parse_redis_url("redis://127.0.0.1") == RedisTarget()
    assert parse_redis_url("redis://:p%40ss@cache.internal:6380/4") == RedisTarget(
        host="cache.internal", port=6380, db=4, password="p@ss"
    )
    tls = parse_redis_url(
        "rediss://alice:s3cret@redis.example.com:6379/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem&ssl_cert_reqs=required&client_name=edge"
    )
    assert (tls.tls, tls.username, tls.password, tls.ca_certs, tls.certfile, tls.keyfile, tls.client_name) == (
        True, "alice", "s3cret", "/etc/ca.pem", "/c.pem", "/k.pem", "edge")  # fmt: skip
    assert parse_redis_url("rediss://h?ssl_cert_reqs=none").cert_reqs == "none"
    assert parse_redis_url("rediss://h?ssl_cert_reqs=CERT_OPTIONAL&ssl_check_hostname=false").check_hostname is False
    unix = parse_redis_url("unix:///run/redis/redis.sock?db=2&password=pw")
    assert (unix.path, unix.db, unix.password, unix.where) == (
        "/run/redis/redis.sock",
        2,
        "pw",
        "/run/redis/redis.sock",
    )
    assert parse_redis_url("redis://h/1?db=3").db == 3  # the query wins, as in redis-py


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "must start with redis://"),
        ("redis://h?timeout=3", "unknown query parameter 'timeout'"),
        ("redis://h?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs a rediss:// URL"),
        ("redis://:s3cret@h:port", "port: not a port number"),
        ("redis://:s3cret@h:99999", "port: not a port number"),
        ("redis://h/zero", "db: 'zero' is not a database number"),
        ("redis://alice@h", "a username without a password"),
        ("redis://", "no host"),
        ("unix://", "needs the socket's path"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs: 'maybe'"),
        ("rediss://h?ssl_check_hostname=sometimes", "ssl_check_hostname: 'sometimes'"),
    ],
)
def test_what_cannot_be_used_is_one_line_without_the_password(url: str, says: str) -> None:
    with pytest.raises(RedisURLError, match=says) as caught:
        parse_redis_url(url)
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)
