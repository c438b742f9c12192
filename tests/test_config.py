"""Configuration: simple mode from the environment, full mode from TOML, one clear line for a bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from megagate.config import config_from_mapping, load_config
from megagate.core.errors import ConfigError
from megagate.routing import ENDPOINTS, Routes, choose


def test_simple_mode_reads_keys_base_url_and_default_model() -> None:
    config = load_config(
        {"MEGALLM_API_KEYS": "k1, k2,", "MEGALLM_BASE_URL": "http://127.0.0.1:9/v1", "MEGAGATE_DEFAULT_MODEL": "gpt-4"}
    )
    upstream = config.upstreams[0]
    assert [k.key for k in upstream.key_configs] == ["k1", "k2"]
    assert upstream.origin_url == "http://127.0.0.1:9" and config.default_model == "gpt-4"


def test_single_key_variable_and_megallm_default_base() -> None:
    config = load_config({"MEGALLM_API_KEY": "k"})
    assert config.upstreams[0].base_url == "https://ai.megallm.io"
    assert config.default_model == "openai-gpt-oss-120b"


def test_no_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="MEGALLM_API_KEYS"):
        load_config({})


def test_toml_with_env_secrets_and_routing(tmp_path: Path) -> None:
    path = tmp_path / "megagate.toml"
    path.write_text(
        """
default_model = "gpt-4"
[aliases]
fast = "llama3.3-70b-instruct"
[timeouts]
connect = 2.5
[[upstreams]]
name = "local"
base_url = "http://127.0.0.1:8001"
models = ["llama*"]
[[upstreams]]
name = "megallm"
base_url = "https://ai.megallm.io/v1"
keys = ["env:MY_KEY", {key = "literal", tier = "pro"}]
"""
    )
    config = load_config({"MEGAGATE_CONFIG": str(path), "MY_KEY": "from-env"})
    assert config.timeouts.connect == 2.5
    chat = ENDPOINTS["/v1/chat/completions"]
    assert choose(config, "llama3.3-70b-instruct", chat).upstream.name == "local"  # type: ignore[union-attr]
    assert choose(config, "gpt-4", chat).upstream.name == "megallm"  # type: ignore[union-attr]
    assert [k.key for k in config.upstreams[1].key_configs] == ["from-env", "literal"]
    routes = Routes(config)  # the remembered choice: the same answers, in bounded memory
    for model in ["llama3.3-70b-instruct", "gpt-4", "llama3.3-70b-instruct"] + [f"m{n}" for n in range(Routes.LIMIT)]:
        for endpoint in ENDPOINTS.values():
            assert routes(model, endpoint) == choose(config, model, endpoint)
    assert len(routes._known) <= Routes.LIMIT


UPSTREAM = '[[upstreams]]\nname = "a"\nbase_url = "http://x"\n'


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[[upstreams]]\nname = "a"\nbase_url = "http://x"\nbogus = 1\n', "upstreams[0]"),
        ('[timeouts]\nconnect = -1\n[[upstreams]]\nname = "a"\nbase_url = "http://x"\n', "timeouts.connect"),
        ('[[upstreams]]\nname = "a"\nbase_url = "x"\n', "upstreams[0].base_url"),
        ('[[upstreams]]\nname = "a"\nbase_url = "http://x"\nkeys = ["env:UNSET_VAR_X"]\n', "upstreams[0].keys[0]"),
        ("default_model = 3\n", "default_model"),
        ("upstreams = []\n", "upstreams"),
        ("not toml [", "MEGAGATE_CONFIG"),
        ('[pool]\nredis_url = "redis://:pw@h:99999/0"\n' + UPSTREAM, "pool.redis_url: port"),
        ('[pool]\nredis_url = "redis://h/one"\n' + UPSTREAM, "pool.redis_url: db"),
        ('[pool]\nredis_url = "redis://h?socket_timeout=1"\n' + UPSTREAM, "pool.redis_url: unknown query"),
        ('[pool]\nredis_url = "rediss://h?ssl_ca_certs=/no/ca.pem"\n' + UPSTREAM, "pool.redis_url: ssl_ca_certs"),
        ("[pool]\nredis_max_connections = 0\n" + UPSTREAM, "pool.redis_max_connections"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config({"MEGAGATE_CONFIG": str(path)})
    assert str(caught.value).startswith(field)
    assert "\n" not in str(caught.value)


def test_a_client_key_given_in_clear_is_kept_only_as_its_digest() -> None:
    import hashlib

    from megagate.config import config_from_mapping

    config = config_from_mapping(
        {
            "upstreams": [{"name": "u", "base_url": "http://127.0.0.1:1"}],
            "clients": [{"name": "alice", "key": "env:ALICE_KEY"}],
        },
        {"ALICE_KEY": "sk-client-alice-secret"},
    )
    client = config.clients[0]
    assert client.key is None and client.key_sha256 == hashlib.sha256(b"sk-client-alice-secret").hexdigest()
    assert "sk-client-alice-secret" not in repr(config)


def test_the_connection_cap_follows_what_the_keys_can_run() -> None:
    """A request holding a key lease never waits for a connection: the cap is the keys' concurrency summed."""

    def upstream(keys: list[Any], **extra: Any) -> Any:
        config = config_from_mapping({"upstreams": [{"name": "u", "base_url": "http://x", "keys": keys, **extra}]})
        return config.upstreams[0]

    assert upstream([{"key": "k1", "tier": "pro"}, {"key": "k2", "max_concurrency": 3}]).connection_cap == 43
    assert upstream(["k1"]).connection_cap == 4096  # an unlimited key: thousands of streams must not queue
    assert upstream([{"key": "k1", "tier": "basic"}], max_connections=5).connection_cap == 5
