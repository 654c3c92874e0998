"""`dpagent install` / `dpagent uninstall`: onboard a VM as a systemd service in one command, and undo it.

Everything is validated before the first change, so bad input changes nothing; every file is compared byte for
byte and mode for mode before it is written, so a second install changes nothing. With `root` other than "/"
(tests, image builds) nothing is run against the live system: no user is created, no chown, no daemon-reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dpagent import safe_yaml
from dpagent.errors import ConfigError, DpAgentError

USER = "dpagent"
UNIT = "dpagent@.service"
TPROXY_UNIT = "dpagent-tproxy.service"
UNIT_BIN = "/opt/dpagent/bin/"  # the path the unit files in systemd/ name; replaced by where dpagent really is
UNIT_SHARE = "/opt/dpagent/share/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RESERVED = {"cp", "tproxy", "transparent-proxy"}  # /var/lib/dpagent/<these> belong to the other units

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@dataclasses.dataclass(frozen=True)
class TproxyOptions:
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    redirect_dns: bool = False


@dataclasses.dataclass(frozen=True)
class InstallRequest:
    cp_address: str
    ca_cert_file: str
    token_file: str
    dataplane_file: str
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    name: str = ""
    readiness_port: int = 0
    tproxy: TproxyOptions | None = None
    root: Path = Path("/")
    start: bool = True


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file or directory the install owns: relative to the root, with its mode and owner."""

    path: str
    mode: int
    owner: str = "root"
    group: str = "root"
    content: bytes | None = None  # None: a directory


def _dirs(root: Path) -> dict[str, Path]:
    return {"etc": root / "etc/dpagent", "units": root / "etc/systemd/system", "state": root / "var/lib/dpagent"}


def find_unit_templates() -> Path:
    """The unit files: a source checkout's systemd/, else the wheel's data files under <prefix>/share/dpagent."""
    here = Path(__file__).resolve().parent.parent / "systemd"
    for cand in (here, Path(sys.prefix) / "share/dpagent/systemd"):
        if (cand / UNIT).is_file():
            return cand
    raise ConfigError(f"cannot find the systemd unit files (looked in {here} and {sys.prefix}/share/dpagent/systemd); "
                      "reinstall dpagent")


def render_unit(template: str, bin_dir: str, prefix: str = sys.prefix) -> str:
    return template.replace(UNIT_BIN, bin_dir.rstrip("/") + "/").replace(UNIT_SHARE, prefix.rstrip("/") + "/share/")


def dpagent_bin_dir() -> str:
    """Where the running dpagent's console scripts are (a venv's bin/), so the unit starts this very install."""
    cand = Path(sys.executable).parent
    if (cand / "dpagent").exists():
        return str(cand)
    which = shutil.which("dpagent")
    if which:
        return str(Path(which).parent)
    raise ConfigError("cannot find the dpagent executable next to this Python or on $PATH; install dpagent with pip "
                      "into a virtualenv such as /opt/dpagent and run its bin/dpagent install")


def _read(path: str, what: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror}; check {flag}") from None


def _validate(req: InstallRequest) -> tuple[str, dict[str, bytes], list[str]]:
    """Every problem at once; returns (name, file contents by install name, warnings)."""
    from cryptography import x509

    from dpagent.agent.dataplane import load_dataplane
    from dpagent.config import p_urls, split_urls

    problems: list[str] = []
    warnings: list[str] = []
    files: dict[str, bytes] = {}
    try:
        for url in split_urls(p_urls(req.cp_address)):
            if not url.startswith("https://"):
                problems.append(f"--cp-address {url} must be https:// (the DP server port, 5678 by default)")
    except ValueError as e:
        problems.append(f"--cp-address: {e}")
    for key, path, what, flag in (("ca.pem", req.ca_cert_file, "CA certificate", "--ca-cert-file"),
                                  ("token", req.token_file, "dataplane token file", "--token-file"),
                                  ("dataplane.yaml", req.dataplane_file, "Dataplane file", "--dataplane-file")):
        try:
            files[key] = _read(path, what, flag)
        except ConfigError as e:
            problems.append(str(e))
    if "ca.pem" in files:
        try:
            x509.load_pem_x509_certificates(files["ca.pem"])
        except ValueError:
            problems.append(f"--ca-cert-file {req.ca_cert_file} holds no PEM certificate (the control plane writes "
                            "its CA to <data-dir>/ca.pem)")
    if "token" in files:
        token = files["token"].strip()
        if not token or token.count(b".") != 2:
            problems.append(f"--token-file {req.token_file} does not hold a dataplane token; generate one on the "
                            "control plane host with `dpagent token generate --name NAME --mesh MESH --valid-for "
                            "720h`")
        files["token"] = token + b"\n"
    name = req.name
    if "dataplane.yaml" in files:
        try:
            dp = load_dataplane("", req.dataplane_file, dict(req.variables))
            name = name or dp.name
            if req.tproxy and dp.networking.transparent_proxying is None:
                warnings.append("the Dataplane has no networking.transparentProxying section: the rules will "
                                "redirect traffic, but Envoy will not get the listeners on 15001/15006 for it")
        except DpAgentError as e:
            problems.append(str(e))
    if name and not _NAME.match(name):
        problems.append(f"--name {name!r} must be 1-63 letters, digits, '.', '_' or '-' (it names the "
                        "systemd instance dpagent@NAME and /etc/dpagent/NAME)")
    elif name in _RESERVED:
        problems.append(f"--name {name!r} is reserved (its state directory would clash); pick another")
    if req.readiness_port and not 0 < req.readiness_port < 65536:
        problems.append(f"--readiness-port {req.readiness_port} is not a port")
    if problems:
        raise ConfigError("cannot install:\n" + "\n".join(f"  - {p}" for p in problems))
    return name, files, warnings


def plan(req: InstallRequest, bin_dir: str, templates: Path) -> tuple[str, list[Entry], list[str]]:
    """(instance name, entries to converge on, warnings) — pure apart from reading the inputs."""
    name, files, warnings = _validate(req)
    inst = f"etc/dpagent/{name}"
    config: dict[str, object] = {
        "controlPlane": {"url": req.cp_address, "caCertFile": f"/{inst}/ca.pem"},
        "dataplaneRuntime": {"dataplaneTokenPath": f"/{inst}/token", "resourcePath": f"/{inst}/dataplane.yaml",
                             **({"resourceVars": dict(sorted(req.variables.items()))} if req.variables else {})},
    }
    if req.readiness_port:
        config["dataplane"] = {"readinessPort": req.readiness_port}
    header = f"# written by `dpagent install` for dpagent@{name}.service; KUMA_* lines in ./env override it\n"
    entries = [
        Entry("etc/dpagent", 0o755),
        Entry(inst, 0o750, "root", USER),
        Entry(f"{inst}/config.yaml", 0o640, "root", USER,
              (header + safe_yaml.dump(config, sort_keys=False)).encode()),
        Entry(f"{inst}/token", 0o600, USER, USER, files["token"]),
        Entry(f"{inst}/ca.pem", 0o644, "root", "root", files["ca.pem"]),
        Entry(f"{inst}/dataplane.yaml", 0o640, "root", USER, files["dataplane.yaml"]),
        Entry(f"etc/systemd/system/{UNIT}", 0o644, content=render_unit((templates / UNIT).read_text(),
                                                                          bin_dir).encode()),
    ]
    if req.tproxy:
        t = req.tproxy
        # Keys are `transparent-proxy install` flag names; SSH (22) stays reachable by its own default.
        doc: dict[str, object] = {"dpagent-user": USER, "redirect-dns": t.redirect_dns}
        if t.exclude_inbound_ports:
            doc["exclude-inbound-ports"] = [str(p) for p in t.exclude_inbound_ports]
        if t.exclude_outbound_ports:
            doc["exclude-outbound-ports"] = [str(p) for p in t.exclude_outbound_ports]
        entries += [
            Entry("etc/dpagent/tproxy.yaml", 0o644, content=(
                "# written by `dpagent install --transparent-proxy`; read by dpagent-tproxy.service\n"
                + safe_yaml.dump(doc, sort_keys=False)).encode()),
            Entry(f"etc/systemd/system/{TPROXY_UNIT}", 0o644,
                  content=render_unit((templates / TPROXY_UNIT).read_text(), bin_dir).encode()),
        ]
    return name, entries, warnings


class Installer:
    """Converges the file system on a plan and drives systemctl; `live` is False under a --root."""

    def __init__(self, root: Path = Path("/"), *, runner: Runner = run_command,
                 echo: Callable[[str], None] = print, live: bool | None = None) -> None:
        self.root = root
        self.runner = runner
        self.echo = echo
        self.live = (str(root) == "/") if live is None else live

    # ---- helpers ------------------------------------------------------------------------------------------

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = self.runner(argv)
        if check and out.returncode != 0:
            raise DpAgentError(f"`{' '.join(argv)}` failed ({out.returncode}): {(out.stderr or out.stdout).strip()}")
        return out

    def _ids(self, e: Entry) -> tuple[int, int] | None:
        if not self.live:
            return None
        return pwd.getpwnam(e.owner).pw_uid, grp.getgrnam(e.group).gr_gid

    def _converge(self, e: Entry) -> bool:
        """Make one entry exactly right; True when something changed."""
        p = self.root / e.path
        ids = self._ids(e)
        changed = False
        if e.content is None:
            if not p.is_dir():
                p.mkdir(parents=True, mode=e.mode)
                changed = True
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                same = p.read_bytes() == e.content
            except OSError:
                same = False
            if not same:
                tmp = p.with_name(f".{p.name}.dpagent-tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, e.mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(e.content)
                os.chmod(tmp, e.mode)
                if ids:
                    os.chown(tmp, *ids)
                os.replace(tmp, p)
                changed = True
        st = p.stat()
        if st.st_mode & 0o7777 != e.mode:
            os.chmod(p, e.mode)
            changed = True
        if ids and (st.st_uid, st.st_gid) != ids:
            os.chown(p, *ids)
            changed = True
        if changed:
            self.echo(f"  wrote {'/' + e.path} ({e.mode:04o} {e.owner}:{e.group})")
        return changed

    def ensure_user(self) -> None:
        if not self.live:
            self.echo(f"  (--root: not creating the system user {USER!r}; the unit runs as it, create it in the image)")
            return
        try:
            pwd.getpwnam(USER)
            return
        except KeyError:
            pass
        nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
        self._run("useradd", "--system", "--user-group", "--home-dir", "/var/lib/dpagent", "--no-create-home",
                  "--shell", nologin, "--comment", "dpagent data plane agent", USER)
        marker = _dirs(self.root)["etc"] / ".user-created-by-dpagent"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{USER}\n")
        self.echo(f"  created system user {USER!r} (the agent and Envoy run as it)")

    def _systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str] | None:
        if self.live:
            return self._run("systemctl", *args, check=check)
        if args[0] in ("enable", "disable") and shutil.which("systemctl"):
            return self._run("systemctl", f"--root={self.root}", *[a for a in args if a != "--now"], check=check)
        return None

    # ---- install / uninstall ------------------------------------------------------------------------------

    def install(self, name: str, entries: list[Entry], *, start: bool, tproxy: bool) -> bool:
        """Converge; returns whether anything changed. Restarts the agent only when its files changed."""
        self.ensure_user()
        changed = [e.path for e in entries if self._converge(e)]
        unit = f"dpagent@{name}.service"
        if any(p.startswith("etc/systemd/") for p in changed) and self.live:
            self._systemctl("daemon-reload")
        if tproxy:
            self._systemctl("enable", TPROXY_UNIT)
            if self.live and start:
                self._systemctl("restart" if any("tproxy" in p for p in changed) else "start", TPROXY_UNIT)
        self._systemctl("enable", unit)
        if self.live and start:
            verb = "restart" if changed else "start"
            self.echo(f"  systemctl {verb} {unit} (returns once Envoy is ready)")
            out = self._systemctl(verb, unit, check=False)
            if out is not None and out.returncode != 0:
                raise DpAgentError(f"{unit} did not start: {(out.stderr or '').strip()}\nThe files are in place; see "
                                   f"`journalctl -u {unit} -n 50`, fix the cause, then `systemctl start {unit}`")
        return bool(changed)

    def uninstall(self, name: str) -> list[str]:
        """Stop and remove one instance; with the last instance gone, remove the shared pieces too."""
        d = _dirs(self.root)
        unit = f"dpagent@{name}.service"
        removed: list[str] = []
        inst = d["etc"] / name
        if not inst.is_dir() and not (d["state"] / name).exists():
            raise ConfigError(f"no dpagent instance {name!r} is installed ({inst} does not exist)")
        self._systemctl("disable", "--now", unit, check=False)
        for p in (inst, d["state"] / name):
            if p.exists():
                shutil.rmtree(p)
                removed.append(str(p))
        others = [p for p in d["etc"].glob("*/config.yaml")] if d["etc"].is_dir() else []
        if not others:
            if (d["units"] / TPROXY_UNIT).exists():
                self._systemctl("disable", "--now", TPROXY_UNIT, check=False)  # ExecStop removes the rules
            for p in (d["units"] / UNIT, d["units"] / TPROXY_UNIT, d["etc"] / "tproxy.yaml"):
                if p.exists():
                    p.unlink()
                    removed.append(str(p))
            wants = d["units"] / "multi-user.target.wants"
            if wants.is_dir() and not any(wants.iterdir()):
                wants.rmdir()
            marker = d["etc"] / ".user-created-by-dpagent"
            if marker.exists():
                marker.unlink()
                if self.live:
                    self._run("userdel", USER, check=False)
                    removed.append(f"user {USER}")
            for p in (d["etc"], d["state"]):
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when empty: an operator's own files stay
            if self.live:
                self._systemctl("daemon-reload")
        for r in removed:
            self.echo(f"  removed {r}")
        return removed
