"""`dpagent apply | get | delete` against a real CP process: bad input is one clear line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from testlib import RunningCp

from dpagent.errors import EXIT_CONFIG


def cli(cp: RunningCp, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
    out = subprocess.run([sys.executable, "-m", "dpagent", *args, "--api-address", cp.api], input=stdin,
                         capture_output=True, env=env, timeout=60)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(errors="replace"),
                                       out.stderr.decode(errors="replace"))


def test_names_cannot_climb_out_of_their_url_segment(local_cp: RunningCp):
    """Item 6: `delete dataplane '../../../meshes/victim'` deleted mesh victim and exited 0."""
    assert httpx.put(f"{local_cp.api}/meshes/victim", json={"type": "Mesh", "name": "victim"}).status_code == 201
    for args in (("delete", "dataplane", "../../../meshes/victim"), ("get", "dataplane", "../../meshes/victim"),
                 ("delete", "dataplane", "x", "-m", "../meshes/victim"), ("inspect", "dp", "a/../../b")):
        out = cli(local_cp, *args)
        assert out.returncode == EXIT_CONFIG, (args, out)
        assert "is not a valid name" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert httpx.get(f"{local_cp.api}/meshes/victim").status_code == 200


@pytest.mark.parametrize(("content", "fragment"), [
    (b"type: Mesh\nname: \xff\xfe\x80\n", "not UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00\x01\x00\x00\x00secret-content\x00",
     "not valid YAML"),
    ("".join("  " * i + "a:\n" for i in range(5000)).encode() + b"  " * 5000 + b"x: 1\n", "not valid YAML"),
    (b"type: Mesh\nname: m\nmetrics:\n  a: &a [1, 2]\n  b: *a\n", "aliases"),
])
def test_unreadable_files_are_one_line_and_exit_2(local_cp: RunningCp, tmp_path: Path, content: bytes,
                                                 fragment: str):
    """Item 10 (and 7 for the CLI): these exited 1 with a traceback; the binary's content was echoed back."""
    f = tmp_path / "in.yaml"
    f.write_bytes(content)
    out = cli(local_cp, "apply", "-f", str(f))
    assert out.returncode == EXIT_CONFIG, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], out.stderr
    assert "secret-content" not in out.stderr and "ELF" not in out.stderr


def test_one_file_with_a_new_mesh_and_its_policy(local_cp: RunningCp, tmp_path: Path):
    """Item 17: the policy's dry run was refused because its mesh was only created later in the same apply."""
    f = tmp_path / "both.yaml"
    f.write_text("type: MeshTrafficPermission\nmesh: fresh\nname: allow\nspec:\n  targetRef: {kind: Mesh}\n"
                 "  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n---\ntype: Mesh\nname: fresh\n")
    out = cli(local_cp, "apply", "-f", str(f))
    assert out.returncode == 0, out.stderr
    assert out.stdout.index("Mesh 'fresh' created") < out.stdout.index("MeshTrafficPermission 'allow' created")
    assert httpx.get(f"{local_cp.api}/meshes/fresh/meshtrafficpermissions/allow").status_code == 200


def test_apply_stays_all_or_nothing_with_a_new_mesh(local_cp: RunningCp, tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("type: Mesh\nname: other\n---\ntype: MeshTrafficPermission\nmesh: other\nname: p\nspec:\n"
                 "  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Maybe}\n")
    out = cli(local_cp, "apply", "-f", str(f))
    assert out.returncode == EXIT_CONFIG and "nothing was applied" in out.stderr, out
    assert httpx.get(f"{local_cp.api}/meshes/other").status_code == 404


def test_token_lifetime_is_capped_by_the_cps_setting(local_cp: RunningCp):
    """Item 14: `validFor: 1000000000000h` was issued. The cap is the CP's --max-token-validity (8760h for this CP,
    not the 87600h default), and the CLI says so in one line."""
    out = cli(local_cp, "token", "generate", "--name", "web-1", "--tag", "kuma.io/service=web", "--valid-for", "8761h")
    assert out.returncode == EXIT_CONFIG and "Traceback" not in out.stderr, out
    assert "validFor" in out.stderr and "8760h" in out.stderr.replace(" ", ""), out.stderr
    out = cli(local_cp, "token", "generate", "--name", "web-1", "--tag", "kuma.io/service=web", "--valid-for", "8760h")
    assert out.returncode == 0 and out.stdout.count(".") == 2, out
