"""The shared store's address, read from a Redis URL as operators copy it from a provider's console.

The query names are redis-py's, so a URL that works there works here:
`redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS) with `ssl_ca_certs`, `ssl_certfile`,
`ssl_keyfile`, `ssl_cert_reqs=required|optional|none` and `ssl_check_hostname=true|false`, and
`unix:///path/redis.sock?db=0`; `db`, `password`, `username` and `client_name` in the query on any scheme. Anything
else is an error of one line, never one that repeats the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
OPTIONS = ("db", "password", "username", "client_name", *TLS_OPTIONS)
CertReqs = Literal["required", "optional", "none"]


class RedisURLError(ValueError):
    """A Redis URL megagate cannot use; the message names the part, never the password."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    host: str = "127.0.0.1"  # unix sockets: empty
    port: int = 6379
    path: str | None = None  # a unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: CertReqs = "required"
    check_hostname: bool = True

    @property
    def where(self) -> str:
        """host:port or the socket's path: what error messages name (no credentials)."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise RedisURLError(f"must start with redis://, rediss:// or unix://, not {parts.scheme or url[:10]!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise RedisURLError(f"unknown query parameter {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    tls = parts.scheme == "rediss"
    if not tls and (given := [name for name in TLS_OPTIONS if name in query]):
        raise RedisURLError(f"{given[0]} needs a rediss:// URL (TLS)")
    username = query.get("username") or (unquote(parts.username) if parts.username else None)
    password = query.get("password") or (unquote(parts.password) if parts.password else None)
    if username and not password:
        raise RedisURLError("a username without a password: Redis' AUTH needs both (user:password@host)")
    path, host, port = None, "", 6379
    if parts.scheme == "unix":
        path = parts.path
        if not path:
            raise RedisURLError("unix:// needs the socket's path, as unix:///run/redis/redis.sock")
        db_text = query.get("db", "0")
    else:
        host = parts.hostname or ""
        if not host:
            raise RedisURLError("no host (redis://host[:port][/db])")
        try:
            port = parts.port or 6379
        except ValueError:
            raise RedisURLError(f"port: not a port number in {parts.netloc.rpartition('@')[2]!r}") from None
        db_text = query.get("db", parts.path.strip("/") or "0")
    if not db_text.isdigit():
        raise RedisURLError(f"db: {db_text!r} is not a database number")
    return RedisTarget(
        host=host, port=port, path=path, db=int(db_text), username=username, password=password,
        client_name=query.get("client_name") or None, tls=tls, ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None, keyfile=query.get("ssl_keyfile") or None,
        cert_reqs=_cert_reqs(query.get("ssl_cert_reqs", "required")),
        check_hostname=_flag("ssl_check_hostname", query.get("ssl_check_hostname", "true")),
    )  # fmt: skip


def _cert_reqs(value: str) -> CertReqs:
    if value.lower() in ("required", "cert_required"):
        return "required"
    if value.lower() in ("optional", "cert_optional"):
        return "optional"
    if value.lower() in ("none", "cert_none"):
        return "none"
    raise RedisURLError(f"ssl_cert_reqs: {value!r} is not required, optional or none")


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise RedisURLError(f"{name}: {value!r} is not true or false")
