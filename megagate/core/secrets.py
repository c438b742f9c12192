"""How a secret (an upstream or client key) is shown: a stable id and a mask, never the key itself.

The id is derived from the key's SHA-256, so it is the same in every worker and replica and across restarts
(metrics and logs can be joined on it) while saying nothing usable about the key.
"""

from __future__ import annotations

import hashlib
import re

# A conventional, non-secret prefix: one or two letter-only segments ending in '-' or '_' ("sk-mega-", "sk-ant-").
_PREFIX = re.compile(r"[A-Za-z]+[-_](?:[A-Za-z]+[-_])?")
_MAX_PREFIX = 12
_SUFFIX = 4
_MIN_LENGTH_FOR_SUFFIX = 16


def key_id(key: str) -> str:
    """A stable public id for `key`: `key-` and 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def mask_key(key: str) -> str:
    """`sk-mega-…a1b2`: the conventional prefix and the last 4 characters, never more than half the key; short keys
    show no suffix at all."""
    match = _PREFIX.match(key)
    prefix = match.group(0)[:_MAX_PREFIX] if match else ""
    suffix = key[-_SUFFIX:] if len(key) >= _MIN_LENGTH_FOR_SUFFIX else ""
    if len(prefix) + len(suffix) > len(key) // 2:  # a "prefix" that is most of a short key is no prefix
        prefix = ""
    return f"{prefix}…{suffix}"
