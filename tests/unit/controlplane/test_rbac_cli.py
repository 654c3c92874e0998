"""User tokens, roles and the audit log through the CLI against a real `dpagent cp run` whose loopback door is
closed (`--api-loopback-admin false`): every call needs a token, from a flag, the environment or the
`config control-planes` file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from testlib import RunningCp, terminate, wait_for

ROLES = """\
type: AccessRole
name: payments-policies
rules:
- types: [MeshTimeout]
  mesh: default
  access: [CREATE, UPDATE, DELETE]
  when:
  - targetRef: {kind: MeshService, name: "payments*"}
---
type: AccessRoleBinding
name: team-a
subjects:
- {type: Group, name: team-a}
roles: [payments-policies]
"""


def timeout_yaml(name: str, service: str) -> str:
    return (f"type: MeshTimeout\nmesh: default\nname: {name}\nspec:\n  targetRef: {{kind: MeshService, name: "
            f"{service}}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: 20s}}\n")


class ClosedCp(RunningCp):
    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.command(sys.executable, "--api-loopback-admin", "false"),
                                         stdout=logf, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 30, what="control plane API")

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture(scope="module")
def closed_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClosedCp]:
    cp = ClosedCp(tmp_path_factory.mktemp("cp") / "data")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    return subprocess.run([sys.executable, "-m", "dpagent", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60)


def test_tokens_roles_context_file_and_audit(closed_cp: ClosedCp, tmp_path: Path) -> None:
    api = ("--api-address", closed_cp.api)
    out = run("get", "meshes", *api)
    assert out.returncode != 0 and "authentication required" in out.stderr, out
    admin = ("--api-token-file", str(closed_cp.data_dir / "admin-token"))
    (tmp_path / "roles.yaml").write_text(ROLES)
    out = run("apply", "-f", str(tmp_path / "roles.yaml"), *api, *admin)
    assert out.returncode == 0, out
    out = run("token", "generate-user", "--name", "john", "--group", "team-a", "--valid-for", "24h", *api, *admin)
    assert out.returncode == 0, out
    john = out.stdout.strip()

    config = tmp_path / "cli" / "control-planes.yaml"
    ctx = {"DPAGENT_CLI_CONFIG": str(config)}
    out = run("config", "control-planes", "add", "--name", "zone-1", "--address", closed_cp.api, "--auth-token", john,
              env=ctx)
    assert out.returncode == 0, out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and john in config.read_text()
    # from here on, no address and no token on the command line: the context file provides both
    (tmp_path / "pay.yaml").write_text(timeout_yaml("pay", "payments"))
    out = run("apply", "-f", str(tmp_path / "pay.yaml"), env=ctx)
    assert out.returncode == 0 and "MeshTimeout 'pay' created" in out.stdout, out
    (tmp_path / "bill.yaml").write_text(timeout_yaml("bill", "billing"))
    out = run("apply", "-f", str(tmp_path / "bill.yaml"), env=ctx)
    assert out.returncode != 0 and 'john lacks CREATE on MeshTimeout "bill" in mesh "default"' in out.stderr, out
    # a token in the environment wins over the context's
    out = run("get", "meshtimeouts", env={**ctx, "DPAGENT_API_TOKEN": "not-a-token"})
    assert out.returncode != 0 and "neither the admin token nor a user token" in out.stderr, out
    # the audit log, read by the admin
    out = run("audit", "--user", "john", *api, *admin)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, out
    assert "CREATE" in lines[0] and "denied" in lines[0] and "default/MeshTimeout/bill" in lines[0]
    assert "CREATE" in lines[1] and "allowed" in lines[1] and "default/MeshTimeout/pay" in lines[1]
    # revoked: refused from the next call on
    (tmp_path / "john.token").write_text(john)
    assert run("token", "revoke-user", "--token-file", str(tmp_path / "john.token"), *api, *admin).returncode == 0
    out = run("get", "meshtimeouts", env=ctx)
    assert out.returncode != 0 and "has been revoked" in out.stderr, out
