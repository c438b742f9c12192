"""Keys are shown as a stable id and a mask that never reveals more than a conventional prefix and 4 characters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from megagate.core.secrets import key_id, mask_key


def test_mask_keeps_the_conventional_prefix_and_the_last_four() -> None:
    assert mask_key("AAAAAAAAAAAAAAA_") == "…AAA_"
    assert mask_key("sk-mega-0123456789abcdefa1b2") == "sk-mega-…a1b2"
    assert mask_key("sk-ant-api03-XXXXXXXXXXXXXXXXwxyz") == "sk-ant-…wxyz"
    assert mask_key("0123456789abcdef0123") == "…0123"
    assert mask_key("short") == "…"


def test_id_is_stable_and_distinct() -> None:
    assert key_id("sk-mega-one") == key_id("sk-mega-one")
    assert key_id("sk-mega-one") != key_id("sk-mega-two")
    assert key_id("sk-mega-one").startswith("key-") and len(key_id("sk-mega-one")) == 12


@given(st.text(min_size=1, max_size=80))
def test_mask_never_shows_the_secret_part(key: str) -> None:
    mask = mask_key(key)
    prefix, _, suffix = mask.partition("…")
    assert key.startswith(prefix) and key.endswith(suffix)
    assert len(suffix) <= 4 and len(prefix) <= 12
    # Never more than half of the key is shown (hypothesis found 'AAAAAAAAAAAAAAA_' shown whole once).
    assert len(prefix) + len(suffix) <= len(key) // 2
    assert key_id(key) not in key or len(key) < 12
