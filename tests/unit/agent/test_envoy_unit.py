"""Envoy discovery and versioning, without running Envoy's data path."""

from __future__ import annotations

import os

import pytest

from dpagent.agent import envoy
from dpagent.agent.bootstrap import EnvoyVersion
from dpagent.errors import ConfigError, EnvoyError


def test_parse_version():
    v = envoy.parse_version("\nenvoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL\n")
    assert v == EnvoyVersion("1.40.0", "9e55/1.40.0/Clean/RELEASE/BoringSSL")
    with pytest.raises(EnvoyError, match="cannot read Envoy's version"):
        envoy.parse_version("garbage")


def test_old_versions_refused():
    envoy.check_supported(EnvoyVersion("1.40.0", ""))
    with pytest.raises(EnvoyError, match=r"Envoy 1\.15\.0 is not supported"):
        envoy.check_supported(EnvoyVersion("1.15.0", ""))


def test_binary_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; fix --binary-path"):
        envoy.find_envoy(str(tmp_path / "nope"))
    f = tmp_path / "envoy"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not executable"):
        envoy.find_envoy(str(f))


def test_docker_shim_refused(tmp_path):
    shim = tmp_path / "envoy"
    shim.write_text("#!/bin/sh\nexec docker run --rm envoyproxy/envoy \"$@\"\n")
    shim.chmod(0o755)
    with pytest.raises(EnvoyError, match="Docker shim"):
        envoy.find_envoy(str(shim))


def test_python_wrapper_on_path_is_skipped(tmp_path, monkeypatch):
    wrapper = tmp_path / "envoy"
    wrapper.write_text("#!/usr/bin/python3\nfrom envoy._main import main\nmain()\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = envoy.find_envoy("")
    assert found == envoy.packaged_binary() and found != str(wrapper)


@pytest.mark.envoy
async def test_real_binary_version():
    v = await envoy.envoy_version(envoy.find_envoy(""))
    assert v.version.startswith("1.")


def test_admin_endpoint_forms():
    assert envoy.admin_endpoint({"admin": {"address": {"pipe": {"path": "/w/a.sock"}}}}) == ("/w/a.sock",
                                                                                              "http://envoy-admin")
    assert envoy.admin_endpoint({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                          "port_value": 9901}}}}) == (
        None, "http://127.0.0.1:9901")
    with pytest.raises(EnvoyError, match="no admin address"):
        envoy.admin_endpoint({})


def test_args():
    args = envoy.envoy_args("/w/b.yaml", drain_time=30, log_level="info", component_log_level="", concurrency=2)
    assert args == ["--config-path", "/w/b.yaml", "--drain-time-s", "30", "--drain-strategy", "immediate",
                    "--disable-hot-restart", "--log-level", "info", "--concurrency", "2"]
    assert "--concurrency" not in envoy.envoy_args("b", drain_time=1, log_level="info", component_log_level="",
                                                   concurrency=0)


def test_envoy_log_lines_are_parsed():
    line = "[2026-11-21 23:09:20.616][17409][warning][config] [source/server/options_impl.cc:287] odd thing"
    assert envoy.parse_envoy_line(line) == (30, "config", "odd thing")
    assert envoy.parse_envoy_line("[2026-11-21 23:09:20.616][1][error][main] boom") == (40, "main", "boom")
    assert envoy.parse_envoy_line("plain text") == (20, "", "plain text")
