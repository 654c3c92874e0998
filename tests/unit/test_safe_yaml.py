"""Every YAML reader refuses aliases and excessive nesting (issue 9, item 7): agent config, Dataplane templates,
tproxy config, and what the CP writes for agents loads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dpagent import safe_yaml
from dpagent.agent.dataplane import decode_resource
from dpagent.config import load_file
from dpagent.errors import ConfigError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n"


def test_aliases_and_deep_nesting_are_refused_with_a_position():
    with pytest.raises(yaml.YAMLError, match=r"aliases .* \(line \d+, column \d+\)"):
        safe_yaml.load(BOMB)
    n = safe_yaml.MAX_DEPTH + 1
    deep = "".join("  " * i + "a:\n" for i in range(n)) + "  " * n + "b: 1"
    with pytest.raises(yaml.YAMLError, match="nested more than"):
        safe_yaml.load(deep)
    assert safe_yaml.load("a: &x [1]\nb: 2\n") == {"a": [1], "b": 2}  # an anchor used once is harmless


def test_json_depth_is_bounded_without_recursion_errors():
    with pytest.raises(ValueError, match="nested more than"):
        safe_yaml.load_json("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="nested more than"):
        safe_yaml.load_json("[" * 100 + "]" * 100)
    assert safe_yaml.load_json('{"a": [1]}') == {"a": [1]}


def test_what_we_write_loads_back():
    shared = {"k": [1, 2]}
    text = safe_yaml.dump({"x": shared, "y": shared})
    assert "&" not in text and safe_yaml.load(text) == {"x": shared, "y": shared}


def test_describe_does_not_echo_the_input():
    with pytest.raises(yaml.YAMLError) as e:
        safe_yaml.load("secret-value: [unclosed\n")
    assert "secret-value" not in safe_yaml.describe(e.value) and "line" in safe_yaml.describe(e.value)


def test_agent_readers_refuse_aliases(tmp_path: Path):
    with pytest.raises(ConfigError, match="aliases"):
        decode_resource(BOMB, "Dataplane file dp.yaml")
    f = tmp_path / "agent.yaml"
    f.write_text(BOMB)
    with pytest.raises(ConfigError, match="aliases"):
        load_file(str(f))


def test_tproxy_config_refuses_aliases(tmp_path: Path):
    from transparent_proxy.config import ConfigError as TproxyConfigError
    from transparent_proxy.config import load_file as tproxy_load

    f = tmp_path / "tproxy.yaml"
    f.write_text(BOMB)
    with pytest.raises(TproxyConfigError, match="aliases"):
        tproxy_load(f)
