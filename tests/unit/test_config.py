"""Config precedence (flags > env > file > defaults), source tracking, collected errors, and the CLI view of it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dpagent.agent.settings import AGENT_SETTINGS, build_agent_config
from dpagent.cli.main import cli
from dpagent.config import resolve
from dpagent.durations import format_duration, parse_duration
from dpagent.errors import ConfigError

BASE = {"name": "a", "mesh": "m"}


def test_defaults_match_kuma_dp():
    cfg, res = build_agent_config(BASE, env={})
    assert cfg.cp_url == "https://localhost:5678"
    assert cfg.drain_time == 30 and cfg.readiness_port == 9902
    assert cfg.retry_backoff == 3 and cfg.retry_max_duration == 300
    assert cfg.proxy_type == "dataplane" and cfg.dns_port == 15053
    assert res.sources["readiness_port"] == "default"


@pytest.mark.parametrize(
    ("flags", "env", "file", "want", "source"),
    [
        ({}, {}, {}, 9902, "default"),
        ({}, {}, {"dataplane": {"readinessPort": 1001}}, 1001, "file (dataplane.readinessPort)"),
        ({}, {"KUMA_READINESS_PORT": "1002"}, {"dataplane": {"readinessPort": 1001}}, 1002, "env KUMA_READINESS_PORT"),
        ({"readiness_port": "1003"}, {"KUMA_READINESS_PORT": "1002"}, {"dataplane": {"readinessPort": 1001}}, 1003,
         "flag --readiness-port"),
    ],
)
def test_precedence(flags, env, file, want, source):
    cfg, res = build_agent_config({**BASE, **flags}, env=env, file_doc=file)
    assert cfg.readiness_port == want
    assert res.sources["readiness_port"] == source


def test_every_bad_value_is_reported_with_its_source():
    with pytest.raises(ConfigError) as e:
        build_agent_config({**BASE, "drain_time": "0s"},
                           env={"KUMA_READINESS_PORT": "70000", "KUMA_CONTROL_PLANE_URL": "ftp://x"},
                           file_doc={"dataplane": {"drainTme": "1s"}})
    msg = str(e.value)
    assert "flag --drain-time: must be greater than zero" in msg
    assert "env KUMA_READINESS_PORT: 70000 is not a port" in msg
    assert "env KUMA_CONTROL_PLANE_URL" in msg and "not an http(s) URL" in msg
    assert "unknown key 'dataplane.drainTme'" in msg


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"resource_path": "dp.yaml", "name": "a"}, "--name/--mesh must not be set together"),
        ({}, "no Dataplane given"),
        ({"name": "a", "mesh": "m", "resource_vars": ("x=1",)}, "--dataplane-var only applies"),
        ({"name": "a", "mesh": "m", "token": "t", "token_file": "f"}, "either inline (--dataplane-token)"),
        ({"resource": "x", "resource_path": "y"}, "either inline (--dataplane) or as a file"),
    ],
)
def test_cross_field_rules(flags, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_agent_config(flags, env={})


def test_vars_from_flags_and_file():
    cfg, _ = build_agent_config({"resource_path": "f", "resource_vars": ("a.b=1", "c==2")}, env={})
    assert cfg.resource_vars == {"a.b": "1", "c": "=2"}
    file_doc = {"dataplaneRuntime": {"resourceVars": {"x": 1}}}
    cfg, _ = build_agent_config({"resource_path": "f"}, env={}, file_doc=file_doc)
    assert cfg.resource_vars == {"x": "1"}
    with pytest.raises(ConfigError, match="'novalue' is not key=value"):
        build_agent_config({"resource_path": "f", "resource_vars": ("novalue",)}, env={})


def test_token_is_never_shown(tmp_path):
    out = CliRunner().invoke(cli, ["config", "show", "--sources", "--dataplane-token", "s3cret-token"])
    assert out.exit_code == 0, out.output
    assert "s3cret-token" not in out.output
    assert "dataplaneRuntime.dataplaneToken" in out.output and "***" in out.output


def test_config_show_sources_cli(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("dataplane:\n  drainTime: 45s\ncontrolPlane:\n  url: https://cp.example:5678\n")
    out = CliRunner().invoke(
        cli, ["config", "show", "--sources", "-o", "json", "--config", str(conf), "--readiness-port", "9000"],
        env={"KUMA_CONTROL_PLANE_URL": "https://env.example:5678"})
    assert out.exit_code == 0, out.output
    rows = {r["key"]: r for r in json.loads(out.output)}
    assert rows["dataplane.drainTime"] == {"key": "dataplane.drainTime", "value": "45s",
                                           "source": f"file:{conf} (dataplane.drainTime)"}
    assert rows["controlPlane.url"]["value"] == "https://env.example:5678"
    assert rows["controlPlane.url"]["source"] == "env KUMA_CONTROL_PLANE_URL"
    assert rows["dataplane.readinessPort"]["source"] == "flag --readiness-port"
    assert rows["dns.proxyPort"]["source"] == "default"


def test_several_cp_replicas_from_a_flag_the_env_or_a_file_list():
    urls = ("https://cp-a.example:5678", "https://cp-b.example:5678")
    cfg, _ = build_agent_config({**BASE, "cp_url": " ,".join(urls) + ","}, env={})
    assert cfg.cp_urls == urls
    cfg, _ = build_agent_config(BASE, env={"KUMA_CONTROL_PLANE_URL": ",".join(urls)})
    assert cfg.cp_urls == urls
    cfg, _ = build_agent_config(BASE, env={}, file_doc={"controlPlane": {"url": list(urls)}})
    assert cfg.cp_urls == urls
    with pytest.raises(ConfigError, match="'ftp://cp-c' is not an http"):
        build_agent_config({**BASE, "cp_url": f"{urls[0]},ftp://cp-c"}, env={})


def test_bool_flag_forms():
    r = CliRunner()
    for args, want in ((["--skip-verify"], "true"), (["--skip-verify=false"], "false"), ([], "false")):
        out = r.invoke(cli, ["config", "show", "-o", "json", *args])
        rows = {x["key"]: x["value"] for x in json.loads(out.output)}
        assert rows["controlPlane.tlsSkipVerify"] == want, args


def test_run_with_bad_config_exits_2_and_names_the_problem(tmp_path):
    out = CliRunner().invoke(cli, ["run", "--name", "a", "--mesh", "m", "--readiness-port", "0"])
    assert out.exit_code == 2
    assert "flag --readiness-port: 0 is not a port" in out.output


def test_unknown_setting_in_resolve():
    res = resolve(AGENT_SETTINGS, {}, env={}, file_doc={})
    assert set(res.values) == {s.attr for s in AGENT_SETTINGS}


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5),
                                               ("720h", 2592000), ("2", 2), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-1s", "1s2", "s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_round_trip(n):
    assert parse_duration(format_duration(n)) == n
