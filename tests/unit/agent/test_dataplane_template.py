"""Template rendering and local Dataplane validation: every problem is reported, each with its path or name."""

from __future__ import annotations

import pytest

from dpagent.agent.dataplane import load_dataplane, render_template, resource_json
from dpagent.errors import ConfigError, ValidationError

TEMPLATE = """\
type: Dataplane
mesh: {{ mesh }}
name: {{ name }}
networking:
  address: {{ net.address }}
  inbound:
  - port: {{port}}
    servicePort: 8080
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
  outbound:
  - port: 33033
    tags:
      kuma.io/service: redis
"""
VARS = {"mesh": "default", "name": "dp-1", "net.address": "10.0.0.2", "port": "11011"}


def test_render_and_parse(tmp_path):
    f = tmp_path / "dp.yaml"
    f.write_text(TEMPLATE)
    dp = load_dataplane("", str(f), VARS)
    assert (dp.mesh, dp.name, dp.networking.address) == ("default", "dp-1", "10.0.0.2")
    assert dp.networking.inbound[0].port == 11011 and dp.networking.inbound[0].workload_port == 8080
    assert dp.networking.outbound[0].service == "redis" and dp.networking.outbound[0].address == "127.0.0.1"
    assert '"name":"dp-1"' in resource_json(dp)


def test_missing_unused_and_unsupported_placeholders_all_reported():
    with pytest.raises(ConfigError) as e:
        render_template("a: {{ a }}\nb: {{ b.c }}\nc: {{#section}}", {"a": "1", "typo": "x"})
    msg = str(e.value)
    assert "variable 'b.c' is used" in msg and "--dataplane-var b.c=VALUE" in msg
    assert "--dataplane-var typo is not used" in msg
    assert "'{{#section}}' is not a supported placeholder" in msg


def test_every_violation_with_path():
    bad = TEMPLATE.replace("kuma.io/protocol: http", "kuma.io/protocol: smtp")
    bad = bad.replace("  outbound:", "  bogus: 1\n  outbound:")
    with pytest.raises(ValidationError) as e:
        load_dataplane(bad, "", {**VARS, "net.address": "not an address", "port": "70000"})
    paths = [p for p, _ in e.value.violations]
    assert paths == ["networking.bogus", "networking.address", "networking.inbound[0].port",
                     'networking.inbound[0].tags["kuma.io/protocol"]']
    assert "4 problems" in str(e.value)


def test_stdin_and_multi_document(monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(TEMPLATE))
    assert load_dataplane("", "-", VARS).name == "dp-1"
    with pytest.raises(ConfigError, match="exactly one Dataplane resource, found 2"):
        load_dataplane(TEMPLATE + "---\n" + TEMPLATE, "", VARS)


def test_unreadable_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the Dataplane file .*nope\.yaml"):
        load_dataplane("", str(tmp_path / "nope.yaml"), {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_dataplane("a: [", "", {})


def test_gateway_and_missing_inbound():
    doc = "type: Dataplane\nmesh: default\nname: x\nnetworking:\n  address: 1.2.3.4\n"
    with pytest.raises(ValidationError, match="at least one inbound interface or gateway"):
        load_dataplane(doc, "", {})
    gw = doc + "  gateway:\n    tags: {kuma.io/service: edge}\n"
    assert load_dataplane(gw, "", {}).networking.gateway == {"tags": {"kuma.io/service": "edge"}}
