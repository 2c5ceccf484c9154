from pathlib import Path

import pytest

from guard.config import load_settings
from guard.errors import ConfigError


def test_defaults():
    s = load_settings(None, {}, environ={})
    assert (s.host, s.port, s.model, s.upstream.kind, s.policy) == ("127.0.0.1", 8000, "default", "local", None)


def test_layers_flags_over_env_over_yaml(tmp_path: Path):
    cfg = tmp_path / "guard.yaml"
    cfg.write_text("port: 9000\nhost: 0.0.0.0\nupstream: {kind: vllm, url: 'http://a:1'}\npolicy: p.yaml\n")
    s = load_settings(cfg, {}, environ={"GUARD_PORT": "9100"})
    assert s.port == 9100 and s.host == "0.0.0.0" and s.upstream.url == "http://a:1"
    assert s.policy == tmp_path / "p.yaml"  # relative to the config file
    s = load_settings(cfg, {"port": 9200, "upstream.url": "http://b:2"}, environ={"GUARD_PORT": "9100"})
    assert s.port == 9200 and s.upstream.url == "http://b:2"


def test_api_keys_from_env():
    s = load_settings(None, {}, environ={"GUARD_API_KEYS": "alice:sk-aaaaaaaa,sk-bbbbbbbb"})
    assert [(k.name, k.key) for k in s.api_keys] == [("alice", "sk-aaaaaaaa"), ("key1", "sk-bbbbbbbb")]


@pytest.mark.parametrize("yaml_text, field, fragment", [
    ("port: eighty\n", "port", "integer"),
    ("upstream: {kind: vllm}\n", "upstream", "--upstream-url"),
    ("upstream: {kind: tgi}\n", "upstream.kind", "'local' or 'vllm'"),
    ("prot: 80\n", "prot", "Extra inputs"),
    ("api_keys: ['a:short']\n", "api_keys.0.key", "at least 8"),
    ("- just\n- a list\n", "config", "mapping"),
    ("port: [\n", "config", "not valid YAML"),
    ("body_read_timeout_s: 0\n", "body_read_timeout_s", "greater than 0"),
    ("header_timeout_s: -1\n", "header_timeout_s", "greater than 0"),
    ("header_timeout_s: 86400\n", "header_timeout_s", "less than or equal to 3600"),
    ("metrics_api_key: short\n", "metrics_api_key", "at least 8"),
])
def test_config_errors_name_the_field(tmp_path: Path, yaml_text, field, fragment):
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {}, environ={})
    assert info.value.param == field
    assert fragment in str(info.value)


def test_unknown_env_var_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, environ={"GUARD_PROT": "1"})
    assert info.value.param == "GUARD_PROT" and "GUARD_PORT" in info.value.message


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml", {}, environ={})


def test_example_config_is_valid():
    example = Path(__file__).parent.parent / "guard.example.yaml"
    s = load_settings(example, {}, environ={})
    assert s.port == 8000


def test_local_device_comes_from_file_env_and_flags(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("local: {device: cpu}\n")
    assert load_settings(path, environ={}).local.device == "cpu"
    assert load_settings(None, environ={"GUARD_DEVICE": "cuda:0"}).local.device == "cuda:0"
    assert load_settings(None, environ={}).local.device == "auto"


def test_transport_settings_from_env_and_defaults():
    s = load_settings(None, {}, environ={})
    assert s.body_read_timeout_s == 30 and s.header_timeout_s == 75 and s.metrics_api_key is None
    s = load_settings(None, {}, environ={"GUARD_BODY_READ_TIMEOUT_S": "2.5", "GUARD_HEADER_TIMEOUT_S": "9",
                                         "GUARD_METRICS_API_KEY": "scrape-secret"})
    assert (s.body_read_timeout_s, s.header_timeout_s, s.metrics_api_key) == (2.5, 9.0, "scrape-secret")
