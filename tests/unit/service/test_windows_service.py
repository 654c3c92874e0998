"""The Windows service's control flow on Linux, with fake pywin32 modules and the real agent + Envoy.

Start → SERVICE_RUNNING only once Envoy is ready; stop → STOP_PENDING with wait hints while the agent drains
(readiness 503, /healthcheck/fail, wait, /quitquitquit) → SERVICE_STOPPED. The exact reports sent to the
service manager are asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from testlib import BootstrapServer, free_port, wait_for

from dpagent.agent.envoy import EnvoyAdmin

pytestmark = [pytest.mark.envoy]

REPO = Path(__file__).resolve().parents[3]
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
ACCEPT_STOP, ACCEPT_PAUSE, ACCEPT_SHUTDOWN = 1, 2, 4
CONTROL_STOP, CONTROL_SHUTDOWN = 1, 5
OWN_PROCESS = 0x10


class FakeScm:
    """What the service manager saw: every SetServiceStatus tuple, plus event-log messages and options."""

    def __init__(self) -> None:
        self.statuses: list[tuple[int, ...]] = []
        self.events: list[str] = []
        self.options: dict[tuple[str, str], str] = {}
        self.installed: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def states(self) -> list[int]:
        return [s[1] for s in self.statuses]


def fake_modules(scm: FakeScm) -> dict[str, types.ModuleType]:
    ws = types.ModuleType("win32service")
    ws.SERVICE_STOPPED, ws.SERVICE_START_PENDING, ws.SERVICE_STOP_PENDING, ws.SERVICE_RUNNING = (
        STOPPED, START_PENDING, STOP_PENDING, RUNNING)
    ws.SERVICE_WIN32_OWN_PROCESS = OWN_PROCESS
    ws.SERVICE_ACCEPT_STOP, ws.SERVICE_ACCEPT_PAUSE_CONTINUE, ws.SERVICE_ACCEPT_SHUTDOWN = (
        ACCEPT_STOP, ACCEPT_PAUSE, ACCEPT_SHUTDOWN)
    ws.SERVICE_CONTROL_STOP, ws.SERVICE_CONTROL_SHUTDOWN = CONTROL_STOP, CONTROL_SHUTDOWN
    ws.SERVICE_CONTROL_PAUSE, ws.SERVICE_CONTROL_CONTINUE, ws.SERVICE_CONTROL_INTERROGATE = 2, 3, 4
    ws.SERVICE_AUTO_START, ws.SERVICE_DEMAND_START, ws.SERVICE_DISABLED = 2, 3, 4

    def set_status(handle: object, status: tuple[int, ...]) -> None:
        assert handle == "handle"
        with scm.lock:
            scm.statuses.append(status)

    ws.SetServiceStatus = set_status

    sm = types.ModuleType("servicemanager")
    sm.RegisterServiceCtrlHandler = lambda name, fn, ex: "handle"
    sm.SetEventSourceName = lambda name: None
    sm.LogErrorMsg = scm.events.append
    sm.LogInfoMsg = scm.events.append

    su = types.ModuleType("win32serviceutil")

    class ServiceFramework:
        """Mirrors pywin32's base class: status tuples, accepted controls and checkpoints as it builds them."""

        def __init__(self, args: list[str]) -> None:
            self.ssh = sm.RegisterServiceCtrlHandler(args[0], self.ServiceCtrlHandlerEx, True)
            self.checkPoint = 0

        def GetAcceptedControls(self) -> int:
            accepted = 0
            if hasattr(self, "SvcStop"):
                accepted |= ACCEPT_STOP
            if hasattr(self, "SvcShutdown"):
                accepted |= ACCEPT_SHUTDOWN
            return accepted

        def ReportServiceStatus(self, state: int, waitHint: int = 5000, win32ExitCode: int = 0,
                                svcExitCode: int = 0) -> None:
            accepted = 0 if state == START_PENDING else self.GetAcceptedControls()
            if state in (RUNNING, STOPPED):
                cp = 0
            else:
                self.checkPoint += 1
                cp = self.checkPoint
            ws.SetServiceStatus(self.ssh, (OWN_PROCESS, state, accepted, win32ExitCode, svcExitCode, cp, waitHint))

        def ServiceCtrlHandlerEx(self, control: int, event_type: int, data: object) -> object:
            if control == CONTROL_STOP:
                return self.SvcStop()
            if control == CONTROL_SHUTDOWN:
                return self.SvcShutdown()
            return None

    su.ServiceFramework = ServiceFramework
    su.GetServiceCustomOption = lambda svc, opt, default=None: scm.options.get((svc, opt), default)
    su.SetServiceCustomOption = lambda svc, opt, value: scm.options.__setitem__((svc, opt), value)
    su.InstallService = lambda *a, **kw: scm.installed.append((a, kw))
    su.RemoveService = lambda svc: scm.installed.append(("removed", svc))

    we = types.ModuleType("win32event")
    we.CreateEvent = lambda *a: threading.Event()
    we.SetEvent = lambda e: e.set()
    we.INFINITE = -1
    return {"win32service": ws, "servicemanager": sm, "win32serviceutil": su, "win32event": we}


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeScm]:
    scm = FakeScm()
    for name, mod in fake_modules(scm).items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # SvcRun points stderr at its log file; put it back after
    spec = importlib.util.spec_from_file_location("dpagent_windows_service", REPO / "windows" / "service.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, scm


def agent_args(tmp: Path, cp: BootstrapServer, rport: int, dataplane_extra: str = "") -> list[str]:
    dp = tmp / "dp.yaml"
    dp.write_text("type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
                  f"  - port: {free_port()}\n    servicePort: 9\n    tags:\n      kuma.io/service: web\n"
                  + dataplane_extra)
    (tmp / "token").write_text("test-token\n")
    return ["--cp-address", cp.url, "--ca-cert-file", str(cp.ca_file), "--dataplane-file", str(dp), "-v",
            "name=web-1", "--dataplane-token-file", str(tmp / "token"), "--readiness-port", str(rport),
            "--drain-time", "1s", "--envoy-log-level", "warning"]


def test_start_running_stop_drained_stopped(service: tuple[Any, FakeScm], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    mod, scm = service
    cp = BootstrapServer(tmp_path)
    rport = free_port()
    scm.options[("dpagent-web-1", "AgentArgs")] = json.dumps(agent_args(tmp_path, cp, rport))
    scm.options[("dpagent-web-1", "LogDir")] = str(tmp_path / "logs")
    admin_calls: list[str] = []
    real_post = EnvoyAdmin.post

    async def spy(self: EnvoyAdmin, path: str) -> bool:
        admin_calls.append(path)
        return await real_post(self, path)

    monkeypatch.setattr(EnvoyAdmin, "post", spy)
    ready_at_running: list[int] = []

    def ready_code() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{rport}/ready", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    svc = mod.DpAgentService(["dpagent-web-1"])
    errors: list[BaseException] = []

    def dispatcher() -> None:  # what pythonservice.exe does: SvcRun, then SERVICE_STOPPED when it returns
        try:
            svc.SvcRun()
            svc.ReportServiceStatus(STOPPED)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=dispatcher)
    t.start()
    try:
        wait_for(lambda: RUNNING in scm.states(), 30, what="SERVICE_RUNNING")
        ready_at_running.append(ready_code())
        assert ready_at_running == [200]  # RUNNING only once Envoy is ready
        svc.ServiceCtrlHandlerEx(CONTROL_STOP, 0, None)
        wait_for(lambda: svc.runner.notifier.draining.is_set(), 10, what="drain started")
        assert ready_code() == 503
        t.join(30)
        assert not t.is_alive()
    finally:
        cp.close()
    assert errors == []
    states = scm.states()
    i_run = states.index(RUNNING)
    i_stop = states.index(STOP_PENDING)
    assert set(states[:i_run]) == {START_PENDING}
    assert set(states[i_run + 1:i_stop]) == set()
    assert set(states[i_stop:-1]) == {STOP_PENDING}
    assert states[-1] == STOPPED
    start = scm.statuses[:i_run]
    assert [s[5] for s in start] == list(range(1, len(start) + 1))  # checkpoints grow
    assert all(s[6] == 10_000 and s[2] == 0 for s in start)  # wait hint; no controls accepted while starting
    assert scm.statuses[i_run] == (OWN_PROCESS, RUNNING, ACCEPT_STOP | ACCEPT_SHUTDOWN, 0, 0, 0, 0)
    stop = scm.statuses[i_stop:-1]
    assert all(s[6] == (1 + 5 + 10) * 1000 for s in stop)  # drain 1s + Envoy stop grace 5s + margin 10s
    assert [s[5] for s in stop] == list(range(stop[0][5], stop[0][5] + len(stop)))
    assert scm.statuses[-1] == (OWN_PROCESS, STOPPED, ACCEPT_STOP | ACCEPT_SHUTDOWN, 0, 0, 0, 5000)
    # the drain, then Envoy asked to quit over its admin API (no signals on Windows)
    assert admin_calls == ["/healthcheck/fail", "/quitquitquit"]
    assert svc.runner.exit_code == 0
    log = (tmp_path / "logs" / "dpagent-web-1.log").read_text()
    assert "draining: Envoy reports unhealthy" in log
    assert "Envoy stopped" in log and "exit_code=0" in log


def test_failed_start_is_reported_as_a_failure(service: tuple[Any, FakeScm], tmp_path: Path) -> None:
    """A control plane that rejects the token: no RUNNING, the event log names the log file, SvcRun raises."""
    mod, scm = service
    cp = BootstrapServer(tmp_path)
    cp.script = [(401, "token expired")]
    scm.options[("dpagent-web-1", "AgentArgs")] = json.dumps(agent_args(tmp_path, cp, free_port()))
    scm.options[("dpagent-web-1", "LogDir")] = str(tmp_path / "logs")
    svc = mod.DpAgentService(["dpagent-web-1"])
    try:
        with pytest.raises(BaseException) as err:
            svc.SvcRun()
    finally:
        cp.close()
    assert "token expired" in str(err.value)
    assert RUNNING not in scm.states()


def test_install_stores_the_run_flags_and_refuses_transparent_proxy(service: tuple[Any, FakeScm],
                                                                    tmp_path: Path) -> None:
    mod, scm = service
    cp = BootstrapServer(tmp_path)
    try:
        args = agent_args(tmp_path, cp, 9902)
        assert mod.main(["install", "--name", "web-1", "--startup", "manual", "--", *args]) == 0
        assert json.loads(scm.options[("dpagent-web-1", "AgentArgs")]) == args
        (class_string, svc_name, _display), kw = scm.installed[0]
        assert class_string.endswith("windows/service.DpAgentService") and svc_name == "dpagent-web-1"
        assert kw["startType"] == 3
        tp = agent_args(tmp_path, cp, 9902, "  transparentProxying:\n    redirectPortInbound: 15006\n"
                                            "    redirectPortOutbound: 15001\n")
        with pytest.raises(Exception, match="transparent proxying is not available on Windows"):
            mod.main(["install", "--name", "web-2", "--", *tp])
        assert ("dpagent-web-2", "AgentArgs") not in scm.options
        with pytest.raises(Exception, match="no Dataplane given"):
            mod.main(["install", "--name", "web-3", "--", "--cp-address", cp.url])
    finally:
        cp.close()
