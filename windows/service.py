"""dpagent as a Windows service (pywin32): the same Agent as `dpagent run`, on an asyncio loop in a thread.

The service reports SERVICE_RUNNING only once Envoy is ready (START_PENDING with wait hints until then). A stop
reports STOP_PENDING with wait hints through the whole drain: readiness 503, Envoy /healthcheck/fail, the drain
wait, then admin /quitquitquit (Windows cannot deliver SIGTERM to a child of a console-less service); pywin32
reports SERVICE_STOPPED when SvcRun returns, or a failure (so SCM recovery restarts it) when it raises.

One service per dataplane, named dpagent-<name>; its `dpagent run` arguments are stored as the service's
AgentArgs option (JSON list) by `python service.py install --name NAME -- <dpagent run flags>` (install.ps1).
pywin32 modules are imported lazily, so this file imports (and is tested) anywhere.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SERVICE_PREFIX = "dpagent-"
ARGS_OPTION = "AgentArgs"
START_WAIT_HINT_MS = 10_000  # how long SCM should wait for the next START_PENDING checkpoint
REPORT_EVERY = 2.0  # seconds between checkpoints, well inside the wait hints
STOP_MARGIN_S = 10


def config_from_args(argv: Sequence[str]) -> Any:
    """Parse `dpagent run` flags exactly as the CLI does (same names, env and config-file precedence)."""
    from dpagent.agent.dataplane import load_dataplane
    from dpagent.agent.platform.windows import TRANSPARENT_PROXY_UNSUPPORTED
    from dpagent.agent.settings import AGENT_SETTINGS, build_agent_config
    from dpagent.cli.options import given_flags
    from dpagent.cli.run import run_cmd
    from dpagent.config import load_file
    from dpagent.errors import ConfigError

    ctx = run_cmd.make_context("dpagent run", list(argv))
    doc, label = load_file(ctx.params.get("config_file"))
    cfg, _ = build_agent_config(given_flags(ctx, ctx.params, AGENT_SETTINGS), file_doc=doc, file_label=label or "file")
    if cfg.resource or cfg.resource_path:
        dp = load_dataplane(cfg.resource, cfg.resource_path, cfg.resource_vars)
        if dp.networking.transparent_proxying is not None:
            raise ConfigError(TRANSPARENT_PROXY_UNSUPPORTED)
    return cfg


class ServiceNotifier:
    """Receives the agent's sd_notify-style events (ready, drain started) from the agent's thread."""

    enabled = False  # no watchdog loop: the SCM has no watchdog
    watchdog_interval = 0.0

    def __init__(self) -> None:
        self.ready_event = threading.Event()
        self.draining = threading.Event()
        self.last_status = ""

    def status(self, text: str) -> bool:
        self.last_status = text
        return True

    def ready(self, status: str = "") -> bool:
        self.last_status = status or self.last_status
        self.ready_event.set()
        return True

    def stopping(self, extend_seconds: float, status: str = "") -> bool:
        self.last_status = status or self.last_status
        self.draining.set()
        return True

    def extend_timeout(self, seconds: float) -> bool:
        return True

    def watchdog(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ServiceRunner:
    """The state machine between the SCM and the agent, free of pywin32 so it is testable anywhere.

    `report(state, wait_hint_ms)` sends one status to the service manager; `consts` holds the SERVICE_* values.
    """

    def __init__(self, cfg: Any, report: Callable[[int, int], None], consts: Any) -> None:
        from dpagent.agent.app import STOP_GRACE
        from dpagent.agent.platform.windows import service_agent_class

        self.cfg = cfg
        self.report = report
        self.c = consts
        self.notifier = ServiceNotifier()
        self.agent = service_agent_class()(cfg, notifier=self.notifier)
        self.stop_hint_ms = int((cfg.drain_time + STOP_GRACE + STOP_MARGIN_S) * 1000)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = threading.Event()
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        if self.stop_requested.is_set():  # a stop that arrived before the loop existed
            loop.call_soon(self.agent.signals, signal.SIGTERM)
        try:
            self.exit_code = loop.run_until_complete(self.agent.run())
        except BaseException as e:  # reported to the SCM as a failure by run()
            self.error = e
        finally:
            loop.close()
            self._done.set()

    def request_stop(self) -> None:
        """From the SCM's control thread: the agent's first stop signal (drain)."""
        self.report(self.c.SERVICE_STOP_PENDING, self.stop_hint_ms)
        self.stop_requested.set()
        if self.loop is not None and not self._done.is_set():
            self.loop.call_soon_threadsafe(self.agent.signals, signal.SIGTERM)

    def run(self) -> int:
        """START_PENDING … RUNNING (once Envoy is ready) … STOP_PENDING …; returns the agent's exit code."""
        self.report(self.c.SERVICE_START_PENDING, START_WAIT_HINT_MS)
        thread = threading.Thread(target=self._thread_main, name="dpagent-agent", daemon=True)
        thread.start()
        while not self._done.is_set() and not self.stop_requested.is_set():
            if self.notifier.ready_event.wait(REPORT_EVERY):
                self.report(self.c.SERVICE_RUNNING, 0)
                break
            self.report(self.c.SERVICE_START_PENDING, START_WAIT_HINT_MS)
        while not self._done.wait(REPORT_EVERY if self.stop_requested.is_set() else 0.5):
            if self.stop_requested.is_set():
                self.report(self.c.SERVICE_STOP_PENDING, self.stop_hint_ms)
        thread.join()
        if self.error is not None:
            raise self.error
        return self.exit_code or 0


def _service_class() -> type:
    import servicemanager
    import win32service
    import win32serviceutil

    class DpAgentService(win32serviceutil.ServiceFramework):
        _svc_name_ = "dpagent"
        _svc_display_name_ = "dpagent data plane proxy"
        _svc_description_ = "Runs Envoy as a service-mesh data plane proxy, configured by the dpagent control plane"

        def __init__(self, args: Sequence[str]) -> None:
            win32serviceutil.ServiceFramework.__init__(self, args)
            self.service_name = args[0]
            self.runner: ServiceRunner | None = None

        def _report(self, state: int, hint: int) -> None:
            self.ReportServiceStatus(state, waitHint=hint)

        def SvcRun(self) -> None:
            """Replaces the base SvcRun, which reports RUNNING before the service has done anything."""
            from dpagent import log

            raw = win32serviceutil.GetServiceCustomOption(self.service_name, ARGS_OPTION, "[]")
            cfg = config_from_args(json.loads(raw))
            log_dir = Path(win32serviceutil.GetServiceCustomOption(self.service_name, "LogDir", "") or ".")
            log_dir.mkdir(parents=True, exist_ok=True)
            sys.stderr = open(log_dir / f"{self.service_name}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            log.setup(cfg.log_level, cfg.log_format)
            self.runner = ServiceRunner(cfg, self._report, win32service)
            code = self.runner.run()
            if code != 0:
                servicemanager.LogErrorMsg(f"{self.service_name}: the agent exited with code {code}; see "
                                           f"{log_dir / (self.service_name + '.log')}")
                raise SystemExit(code)  # pywin32 reports SERVICE_STOPPED with an error: SCM recovery applies

        def SvcStop(self) -> None:
            if self.runner is not None:
                self.runner.request_stop()
            else:
                self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)

        SvcShutdown = SvcStop

    return DpAgentService


def __getattr__(name: str) -> Any:
    """PythonService.exe looks the class up by name: build it (and import pywin32) only then."""
    if name == "DpAgentService":
        cls = _service_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ---- install / remove (called by install.ps1) --------------------------------------------------------------------

def install(name: str, agent_args: Sequence[str], *, startup: str = "auto", log_dir: str = "") -> str:
    """Register dpagent-<name> after validating its arguments with the same parser as `dpagent run`."""
    import win32service
    import win32serviceutil

    config_from_args(agent_args)  # bad flags or a Dataplane with transparent proxying fail before any change
    svc = SERVICE_PREFIX + name
    start = {"auto": win32service.SERVICE_AUTO_START, "manual": win32service.SERVICE_DEMAND_START,
             "disabled": win32service.SERVICE_DISABLED}[startup]
    class_string = f"{Path(__file__).with_suffix('')}.DpAgentService"
    win32serviceutil.InstallService(class_string, svc, f"dpagent data plane proxy {name}", startType=start,
                                    description="Envoy supervised by dpagent, one service per dataplane")
    win32serviceutil.SetServiceCustomOption(svc, ARGS_OPTION, json.dumps(list(agent_args)))
    if log_dir:
        win32serviceutil.SetServiceCustomOption(svc, "LogDir", log_dir)
    return svc


def remove(name: str) -> None:
    import win32serviceutil

    win32serviceutil.RemoveService(SERVICE_PREFIX + name)


def main(argv: Sequence[str]) -> int:
    """`service.py install --name NAME [--startup auto|manual] [--log-dir DIR] -- <dpagent run flags>` | `remove`."""
    args = list(argv)
    agent_args: list[str] = []
    if "--" in args:
        i = args.index("--")
        args, agent_args = args[:i], args[i + 1:]
    if not args or args[0] not in ("install", "remove"):
        print(main.__doc__, file=sys.stderr)
        return 2
    opts = dict(zip(args[1::2], args[2::2], strict=False))
    name = opts.get("--name", "")
    if not name:
        print("--name NAME is required", file=sys.stderr)
        return 2
    if args[0] == "remove":
        remove(name)
        print(f"removed {SERVICE_PREFIX}{name}")
        return 0
    svc = install(name, agent_args, startup=opts.get("--startup", "auto"), log_dir=opts.get("--log-dir", ""))
    print(f"installed {svc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
