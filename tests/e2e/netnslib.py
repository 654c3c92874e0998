"""Two network namespaces joined by a veth pair, each with a default route (service VIPs need one), for e2e tests
of the transparent proxy: hosts "a" and a peer, processes started in them stopped with them.

An address with a ':' makes that pair IPv6-only (added with `nodad`, so it is usable at once instead of tentative).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path


class NetnsPair:
    def __init__(self, root: Path, prefix: str, addresses: dict[str, str], *, nameserver: str,
                 resolv_hosts: tuple[str, ...] = ("a",)) -> None:
        """`addresses`: host name → its address on the veth (two hosts). `nameserver` goes into the resolv.conf of
        `resolv_hosts`; the transparent proxy redirects it to the agent's DNS proxy."""
        tag = secrets.token_hex(3)
        self.root = root
        self.addresses = addresses
        self.ns = {host: f"{prefix}-{host}-{tag}" for host in addresses}
        self.nameserver, self.resolv_hosts = nameserver, resolv_hosts
        self.procs: list[subprocess.Popen[str]] = []

    def prefix(self, host: str, uid: int | None) -> list[str]:
        out = ["ip", "netns", "exec", self.ns[host]]
        if uid is not None:
            out += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return out

    def run(self, host: str, *cmd: str, uid: int | None = None, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.prefix(host, uid), *cmd], capture_output=True, text=True, input=input,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in {host} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    def spawn(self, host: str, *cmd: str, uid: int | None = None, log: str = "") -> subprocess.Popen[str]:
        out = open(self.root / (log or f"{host}-{len(self.procs)}.log"), "w")  # noqa: SIM115
        proc = subprocess.Popen([*self.prefix(host, uid), *cmd], stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))})
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        (h1, a1), (h2, a2) = self.addresses.items()
        n1, n2 = self.ns[h1], self.ns[h2]
        for ns in (n1, n2):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        d1, d2 = f"v{h1[0]}{n1[-6:]}", f"v{h2[0]}{n2[-6:]}"
        subprocess.run(["ip", "link", "add", d1, "netns", n1, "type", "veth", "peer", "name", d2, "netns", n2],
                       check=True)
        for ns, dev, ip in ((n1, d1, a1), (n2, d2, a2)):
            if ":" in ip:
                subprocess.run(["ip", "-n", ns, "-6", "addr", "add", f"{ip}/64", "dev", dev, "nodad"], check=True)
            else:
                subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
            family = ["-6"] if ":" in ip else []
            subprocess.run(["ip", "-n", ns, *family, "route", "add", "default", "dev", dev], check=True)
        for host in self.resolv_hosts:
            etc = Path("/etc/netns") / self.ns[host]
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {self.nameserver}\n")

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in self.ns.values():
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def start_agent(self, host: str, name: str, dataplane_yaml: str, *, api: str, cp_url: str, ca: Path,
                    uid: int) -> None:
        """`dpagent run` as `uid` in `host`, working in `<root>/<name>`, with a token the CP issues for `name`."""
        wd = self.root / name
        wd.mkdir(mode=0o755)
        (wd / "token").write_text(self.run("a", sys.executable, "-m", "dpagent", "token", "generate", "--name", name,
                                           "--valid-for", "1h", "--api-address", api).stdout.strip())
        (wd / "dp.yaml").write_text(dataplane_yaml)
        for f in (wd, *wd.iterdir()):
            os.chown(f, uid, uid)
        self.spawn(host, sys.executable, "-m", "dpagent", "run", "--cp-address", cp_url, "--ca-cert-file", str(ca),
                   "--dataplane-file", str(wd / "dp.yaml"), "--dataplane-token-file", str(wd / "token"),
                   "--work-dir", str(wd / "work"), "--readiness-port", "9902", "--drain-time", "1s", uid=uid,
                   log=f"{name}.log")

    def envoy_stat(self, host: str, wd: str, name: str) -> int:
        """A counter of the Envoy whose agent works in `<root>/<wd>/work`, read over its admin socket."""
        sock = self.root / wd / "work" / "envoy-admin.sock"
        text = self.run(host, "curl", "-s", "--unix-socket", str(sock), "http://admin/stats?filter=" + name).stdout
        return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if line.split(":")[0].strip() == name)
