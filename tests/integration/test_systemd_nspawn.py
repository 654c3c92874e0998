"""The units under a real systemd: a Debian rootfs booted with systemd-nspawn, dpagent pip-installed inside.

Checks, in order: the agent stays `activating` (STATUS=bootstrapping) while its control plane is down and becomes
`active` exactly when Envoy is ready; `systemctl stop` drains (deactivating with the drain STATUS, exit 0, Envoy
not SIGKILLed); `dpagent install --transparent-proxy` restarts it; the rules come back after a reboot, ordered
before the agent; `dpagent uninstall` leaves nothing behind.

The rootfs is cached under /var/cache/dpagent-test keyed by its package list (the first run debootstraps, a few
minutes); the Python wheels are cached there too, keyed by pyproject's dependencies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DPAGENT_TEST_CACHE", "/var/cache/dpagent-test"))
SUITE = "bookworm"
INCLUDE = ("dbus", "iproute2", "iptables", "python3", "python3-venv", "systemd", "systemd-sysv")
MIRROR = os.environ.get("DPAGENT_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PATH = "/opt/dpagent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DATAPLANE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
  - port: 18080
    servicePort: 18081
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
"""

# Used only while the wheel does not ship the real `transparent-proxy` CLI: same commands, same chain prefix.
STAND_IN_TPROXY = """\
#!/bin/sh
# stand-in for the transparent-proxy CLI (tests only)
set -e
case "$1" in
install)
  iptables-restore --noflush <<EOF
*nat
:DPAGENT_INBOUND - [0:0]
:DPAGENT_OUTBOUND - [0:0]
-A PREROUTING -p tcp -j DPAGENT_INBOUND
-A OUTPUT -p tcp -j DPAGENT_OUTBOUND
-A DPAGENT_INBOUND -p tcp --dport 22 -j RETURN
-A DPAGENT_OUTBOUND -m owner --uid-owner dpagent -j RETURN
COMMIT
EOF
  ;;
uninstall)
  iptables -t nat -D PREROUTING -p tcp -j DPAGENT_INBOUND || true
  iptables -t nat -D OUTPUT -p tcp -j DPAGENT_OUTBOUND || true
  for c in DPAGENT_INBOUND DPAGENT_OUTBOUND; do iptables -t nat -F $c || true; iptables -t nat -X $c || true; done
  ;;
*) echo "usage: transparent-proxy install|uninstall" >&2; exit 2 ;;
esac
"""


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap and systemd-nspawn)"
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter", "iptables") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install debootstrap systemd-container util-linux iptables)"
    return None


if _skip_reason():
    pytest.skip(_skip_reason() or "", allow_module_level=True)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cached_rootfs() -> Path:
    key = hashlib.sha256(f"{SUITE}|minbase|{','.join(sorted(INCLUDE))}".encode()).hexdigest()[:12]
    final = CACHE / f"rootfs-{key}"
    with _locked("rootfs"):
        if not (final / "usr/bin/python3").exists():
            tmp = CACHE / f"rootfs-{key}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            out = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(sorted(INCLUDE))}", SUITE,
                                  str(tmp), MIRROR], capture_output=True, text=True, timeout=1500)
            if out.returncode != 0:
                pytest.skip(f"debootstrap failed ({out.returncode}); is {MIRROR} reachable? {out.stderr[-500:]}")
            tmp.rename(final)
    return final


def wheelhouse(tmp: Path) -> Path:
    """Dependencies as wheels (cached, by pyproject's dependency list) plus a fresh dpagent wheel."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256("\n".join(deps).encode()).hexdigest()[:12]
    house = CACHE / f"wheels-{key}"
    with _locked("wheels"):
        if not house.is_dir():
            tmp_house = CACHE / f"wheels-{key}.tmp"
            shutil.rmtree(tmp_house, ignore_errors=True)
            out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--only-binary=:all:", "--wheel-dir",
                                  str(tmp_house), *deps], capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                pytest.skip(f"cannot fetch the dependency wheels from PyPI: {out.stderr[-500:]}")
            tmp_house.rename(house)
    out_dir = tmp / "wheels"
    shutil.copytree(house, out_dir)
    src = tmp / "src"  # build from a copy: setuptools leaves build/ behind in the tree it builds
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".ruff_cache", ".hypothesis", "tests",
                                                             "bench"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out_dir),
                          str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out_dir


class Container:
    """A booted systemd-nspawn container; commands run inside through nsenter (the host may lack machined)."""

    def __init__(self, root: Path, binds: dict[Path, str], log: Path) -> None:
        self.root, self.binds, self.log = root, binds, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self) -> None:
        args = ["systemd-nspawn", "-D", str(self.root), "-b", "--private-network", "--register=no", "--keep-unit",
                "--machine=dpagent-test", "--console=read-only"]
        args += [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the container process
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.leader:
            assert self.proc.poll() is None, f"systemd-nspawn exited: {self.log.read_text()[-2000:]}"
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
                    for pid in child.read_text().split():
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                            self.leader = int(pid)
            time.sleep(0.2)
        assert self.leader, "the container's systemd did not start"
        state = self.sh("timeout 120 systemctl is-system-running --wait", check=False).stdout.strip()
        assert state in ("running", "degraded"), state

    def sh(self, cmd: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", "/bin/sh", "-c", cmd],
                             capture_output=True, text=True, timeout=timeout,
                             env={"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"})
        if check and out.returncode != 0:
            raise AssertionError(f"`{cmd}` failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def ready_code(self, port: int = 9902) -> int:
        py = ("import urllib.request,sys\ntry:\n print(urllib.request.urlopen("
              f"'http://127.0.0.1:{port}/ready',timeout=2).status)\nexcept Exception as e:\n"
              " print(getattr(e,'code',0))")
        return int(self.sh(f"python3 -c \"{py}\"", check=False).stdout.strip() or 0)

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc
        code = self.proc.wait(timeout)
        self.leader = 0
        return code

    def poweroff(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.sh("systemctl poweroff", check=False, timeout=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def poll(fn, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    rootfs = cached_rootfs()
    tmp = tmp_path_factory.mktemp("nspawn")
    wheels = wheelhouse(tmp)
    work = Path(f"/var/tmp/dpagent-nspawn-{os.getpid()}")  # on disk, not tmpfs: a full rootfs copy
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(work)], check=True)
    c = Container(work, {wheels: "/wheels", REPO / "systemd": "/src/systemd"}, tmp / "console.log")
    try:
        c.boot()
        c.sh("python3 -m venv /opt/dpagent && /opt/dpagent/bin/pip install -q --no-index --find-links /wheels dpagent"
             " && mkdir -p /opt/dpagent/share/dpagent/systemd && cp /src/systemd/* /opt/dpagent/share/dpagent/systemd/")
        if c.sh("test -x /opt/dpagent/bin/transparent-proxy", check=False).returncode != 0:
            c.sh(f"cat > /opt/dpagent/bin/transparent-proxy <<'SCRIPT'\n{STAND_IN_TPROXY}SCRIPT\n"
                 "chmod 755 /opt/dpagent/bin/transparent-proxy")
        yield c
    finally:
        c.poweroff()
        shutil.rmtree(work, ignore_errors=True)


def dpagent_cmd(c: Container, verb: str) -> str:
    """`dpagent VERB`, or the click command itself until main.py registers the verb."""
    if c.sh(f"dpagent {verb} --help", check=False).returncode == 0:
        return f"dpagent {verb}"
    fn = {"install": "install_cmd", "uninstall": "uninstall_cmd", "doctor": "doctor_cmd"}[verb]
    mod = "doctor" if verb == "doctor" else "install"
    return (f"/opt/dpagent/bin/python -c 'import sys; from dpagent.cli.{mod} import {fn}; "
            f"sys.argv[0] = \"dpagent {verb}\"; {fn}()'")


def journal(c: Container, unit: str) -> str:
    return c.sh(f"journalctl --no-pager -o cat -u {unit}").stdout


INSTALL = ("{install} --cp-address https://127.0.0.1:5678 --ca-cert-file /var/lib/dpagent/cp/ca.pem "
           "--token-file /root/web-1.token --dataplane-file /root/dp.yaml -v name=web-1")


def test_agent_is_active_only_once_envoy_is_ready(box: Container) -> None:
    c = box
    c.sh("cp /opt/dpagent/share/dpagent/systemd/dpagent-cp.service /etc/systemd/system/ && systemctl daemon-reload"
         " && systemctl enable --now dpagent-cp.service")
    poll(lambda: c.sh("dpagent get meshes", check=False).returncode == 0, 60, "control plane API")
    c.sh("dpagent token generate --name web-1 --mesh default --valid-for 1h > /root/web-1.token")
    c.sh(f"cat > /root/dp.yaml <<'EOF'\n{DATAPLANE}EOF")
    c.sh("systemctl stop dpagent-cp.service")  # the agent must wait for it, in `activating`
    c.sh("mkdir -p /etc/dpagent/web-1 && echo KUMA_DATAPLANE_DRAIN_TIME=3s > /etc/dpagent/web-1/env")
    out = c.sh(INSTALL.format(install=dpagent_cmd(c, "install")) + " --no-start")
    assert "created system user 'dpagent'" in out.stdout
    assert c.sh("stat -c '%a %U:%G' /etc/dpagent/web-1 /etc/dpagent/web-1/token").stdout.split("\n")[:2] == [
        "750 root:dpagent", "600 dpagent:dpagent"]
    c.sh("systemctl start --no-block dpagent@web-1")
    st = poll(lambda: (s := c.show("dpagent@web-1", "ActiveState", "StatusText"))["StatusText"].startswith(
        "bootstrapping") and s, 30, "STATUS=bootstrapping")
    assert st["ActiveState"] == "activating"
    assert c.ready_code() == 503
    c.sh("systemctl start dpagent-cp.service")
    poll(lambda: c.show("dpagent@web-1", "ActiveState")["ActiveState"] != "activating", 60, "agent start")
    st = c.show("dpagent@web-1", "ActiveState", "StatusText", "MainPID", "WatchdogUSec", "NotifyAccess")
    assert st["ActiveState"] == "active", journal(c, "dpagent@web-1")
    assert c.ready_code() == 200
    assert st["StatusText"].startswith("ready: Envoy pid ")
    assert st["WatchdogUSec"] == "30s" and st["NotifyAccess"] == "main"
    # the agent and Envoy run as dpagent, with no capabilities, under the hardened unit
    uid = c.sh("id -u dpagent").stdout.strip()
    envoy_pid = st["StatusText"].split("pid ")[1].split()[0]
    for pid in (st["MainPID"], envoy_pid):
        status = c.sh(f"cat /proc/{pid}/status").stdout
        assert f"Uid:\t{uid}\t" in status
        assert "CapEff:\t0000000000000000" in status
    log = journal(c, "dpagent@web-1")
    assert "bootstrap failed, will retry" in log
    line = next(x for x in log.splitlines() if "Envoy is ready" in x)
    assert line.startswith("info  dpagent.agent: Envoy is ready"), line  # journald stamps it; no 2nd timestamp


def test_stop_drains_before_envoy_stops(box: Container) -> None:
    c = box
    t0 = time.monotonic()
    c.sh("systemctl stop --no-block dpagent@web-1")
    st = poll(lambda: (s := c.show("dpagent@web-1", "ActiveState", "StatusText"))["StatusText"].startswith(
        "draining") and s, 10, "STATUS=draining")
    assert st["ActiveState"] == "deactivating"
    assert st["StatusText"] == "draining for 3s before stopping Envoy"
    assert c.ready_code() == 503
    poll(lambda: c.show("dpagent@web-1", "ActiveState")["ActiveState"] == "inactive", 30, "agent stopped")
    assert time.monotonic() - t0 >= 3
    st = c.show("dpagent@web-1", "Result", "ExecMainStatus")
    assert st == {"Result": "success", "ExecMainStatus": "0"}
    log = journal(c, "dpagent@web-1")
    assert "draining: Envoy reports unhealthy, waiting before stopping it" in log
    stopped = [x for x in log.splitlines() if "dpagent.agent: Envoy stopped" in x]
    assert stopped and stopped[-1].endswith("exit_code=0"), stopped
    # Envoy got its SIGTERM from the agent after the drain, not from systemd at the start of the stop
    assert log.index("draining: Envoy reports unhealthy") < log.index("caught ENVOY_SIGTERM")
    assert "SIGKILL" not in log


def test_tproxy_rules_come_back_after_reboot(box: Container) -> None:
    c = box
    install = INSTALL.format(install=dpagent_cmd(c, "install"))
    out = c.sh(f"{install} --transparent-proxy")  # a live install: returns once Envoy is ready
    assert "is running and Envoy is ready" in out.stdout
    assert c.show("dpagent@web-1", "ActiveState")["ActiveState"] == "active"
    assert "DPAGENT_" in c.sh("iptables-save -t nat").stdout
    again = c.sh(f"{install} --transparent-proxy")
    assert "nothing to change" in again.stdout
    c.sh("systemctl reboot", check=False)
    assert c.wait_exit() == 133  # nspawn's "reboot requested"
    c.boot()
    assert "DPAGENT_" in c.sh("iptables-save -t nat").stdout
    poll(lambda: c.show("dpagent@web-1", "ActiveState")["ActiveState"] == "active", 90, "agent active after boot")
    tp = int(c.show("dpagent-tproxy.service", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    ag = int(c.show("dpagent@web-1", "InactiveExitTimestampMonotonic")["InactiveExitTimestampMonotonic"])
    assert 0 < tp <= ag  # rules in place before the agent started
    assert c.ready_code() == 200
    # doctor reads the installed instance (config, env file, state dir) and finds it healthy
    doctor = c.sh(f"{dpagent_cmd(c, 'doctor')} --instance web-1 -o json", check=False)
    checks = {x["name"]: x for x in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 0, doctor.stdout
    assert checks["transparent-proxy"]["status"] == "ok" and "DPAGENT_" in checks["transparent-proxy"]["detail"]
    assert checks["identity"]["status"] == "ok" and checks["envoy"]["status"] == "ok"
    assert checks["xds"]["status"] == "ok"


def test_uninstall_leaves_nothing_behind(box: Container) -> None:
    c = box
    out = c.sh(f"{dpagent_cmd(c, 'uninstall')} web-1")
    assert "dpagent@web-1 uninstalled" in out.stdout
    assert "DPAGENT_" not in c.sh("iptables-save -t nat").stdout
    left = c.sh("ls -d /etc/dpagent /var/lib/dpagent/web-1 /etc/systemd/system/dpagent@.service "
                "/etc/systemd/system/dpagent-tproxy.service /etc/systemd/system/multi-user.target.wants/dpagent@*",
                check=False)
    assert left.stdout.strip() == "", left.stdout
    assert c.sh("id dpagent", check=False).returncode != 0
    assert c.show("dpagent@web-1", "LoadState")["LoadState"] == "not-found"
    assert c.show("dpagent-cp.service", "ActiveState") == {"ActiveState": "active"}
