"""`dpagent install/uninstall --root`: exact files and modes, a second install changes nothing, bad input changes
nothing, uninstall leaves the tree as it was."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from testlib import make_ca_and_server_cert

from dpagent.agent.settings import build_agent_config
from dpagent.cli.install import install_cmd, uninstall_cmd
from dpagent.install import dpagent_bin_dir

TEMPLATE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
  - port: 8080
    tags:
      kuma.io/service: web
"""


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    (d / "ca.pem").write_bytes(make_ca_and_server_cert(["cp"])["ca"])
    (d / "token").write_text("eyJhbGciOiJSUzI1NiJ9.eyJOYW1lIjoid2ViLTEifQ.c2ln\n")
    (d / "dp.yaml").write_text(TEMPLATE)
    return {"ca": d / "ca.pem", "token": d / "token", "dp": d / "dp.yaml"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc/systemd/system").mkdir(parents=True)
    return r


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, p.read_bytes())
    return out


def install(root: Path, inputs: dict[str, Path], *extra: str) -> tuple[int, str]:
    args = ["--cp-address", "https://cp.example:5678", "--ca-cert-file", str(inputs["ca"]), "--token-file",
            str(inputs["token"]), "--dataplane-file", str(inputs["dp"]), "-v", "name=web-1", "-v",
            "address=10.0.0.5", "--root", str(root), *extra]
    r = CliRunner().invoke(install_cmd, args)
    return r.exit_code, r.output


def test_install_writes_exact_files_and_modes(root: Path, inputs: dict[str, Path]) -> None:
    code, out = install(root, inputs)
    assert code == 0, out
    snap = snapshot(root)
    modes = {k: v[1] for k, v in snap.items() if v[0] != "link"}
    assert modes["etc/dpagent"] == 0o755
    assert modes["etc/dpagent/web-1"] == 0o750
    assert modes["etc/dpagent/web-1/token"] == 0o600
    assert modes["etc/dpagent/web-1/config.yaml"] == 0o640
    assert modes["etc/dpagent/web-1/dataplane.yaml"] == 0o640
    assert modes["etc/dpagent/web-1/ca.pem"] == 0o644
    assert modes["etc/systemd/system/dpagent@.service"] == 0o644
    assert not any(k.endswith("tproxy.yaml") or "tproxy.service" in k for k in snap)
    assert snap["etc/dpagent/web-1/token"][2] == inputs["token"].read_bytes()
    assert snap["etc/dpagent/web-1/dataplane.yaml"][2] == inputs["dp"].read_bytes()  # the template, not rendered
    unit = snap["etc/systemd/system/dpagent@.service"][2].decode()
    assert f"ExecStart={dpagent_bin_dir()}/dpagent run --config /etc/dpagent/%i/config.yaml" in unit
    assert "/opt/dpagent/bin" not in unit
    if shutil.which("systemctl"):
        link = snap["etc/systemd/system/multi-user.target.wants/dpagent@web-1.service"]
        assert link == ("link", 0, "/etc/systemd/system/dpagent@.service")
    assert "not creating the system user 'dpagent'" in out
    # the config file is what `dpagent run --config` reads, with the instance's paths
    doc = yaml.safe_load(snap["etc/dpagent/web-1/config.yaml"][2])
    cfg, _ = build_agent_config({}, env={}, file_doc=doc)
    assert cfg.cp_url == "https://cp.example:5678"
    assert cfg.token_file == "/etc/dpagent/web-1/token"
    assert cfg.ca_cert_file == "/etc/dpagent/web-1/ca.pem"
    assert cfg.resource_path == "/etc/dpagent/web-1/dataplane.yaml"
    assert dict(cfg.resource_vars) == {"address": "10.0.0.5", "name": "web-1"}


def test_second_install_changes_nothing(root: Path, inputs: dict[str, Path]) -> None:
    assert install(root, inputs)[0] == 0
    before = snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if not p.is_symlink()}
    code, out = install(root, inputs)
    assert code == 0, out
    assert "nothing to change" in out
    assert snapshot(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if not p.is_symlink()} == mtimes


def test_install_repairs_modes_and_content(root: Path, inputs: dict[str, Path]) -> None:
    assert install(root, inputs)[0] == 0
    before = snapshot(root)
    os.chmod(root / "etc/dpagent/web-1/token", 0o644)
    (root / "etc/dpagent/web-1/ca.pem").write_text("tampered")
    code, out = install(root, inputs)
    assert code == 0
    assert "wrote /etc/dpagent/web-1/token (0600" in out and "wrote /etc/dpagent/web-1/ca.pem" in out
    assert snapshot(root) == before


@pytest.mark.parametrize("breakage, message", [
    ("no-token", "cannot read the dataplane token file"),
    ("empty-token", "does not hold a dataplane token"),
    ("bad-yaml", "is not valid YAML"),
    ("bad-ca", "holds no PEM certificate"),
    ("unused-var", "--dataplane-var extra is not used"),
    ("bad-url", "must be https://"),
])
def test_bad_input_fails_clearly_and_changes_nothing(root: Path, inputs: dict[str, Path], breakage: str,
                                                     message: str) -> None:
    extra: list[str] = []
    if breakage == "no-token":
        inputs["token"].unlink()
    elif breakage == "empty-token":
        inputs["token"].write_text("\n")
    elif breakage == "bad-yaml":
        inputs["dp"].write_text("name: {{ name }}\naddress: {{ address }}\nx: [unclosed\n")
    elif breakage == "bad-ca":
        inputs["ca"].write_text("not a certificate")
    elif breakage == "unused-var":
        extra = ["-v", "extra=1"]
    before = snapshot(root)
    args = ["--cp-address", "http://cp:5678" if breakage == "bad-url" else "https://cp:5678", "--ca-cert-file",
            str(inputs["ca"]), "--token-file", str(inputs["token"]), "--dataplane-file", str(inputs["dp"]),
            "-v", "name=web-1", "-v", "address=10.0.0.5", "--root", str(root), *extra]
    r = CliRunner().invoke(install_cmd, args)
    assert r.exit_code != 0
    assert message in str(r.exception) + r.output
    assert snapshot(root) == before


def test_invalid_dataplane_lists_every_violation(root: Path, inputs: dict[str, Path]) -> None:
    inputs["dp"].write_text("type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: {{ address }}\n"
                            "  inbound:\n  - port: 99999\n")
    r = CliRunner().invoke(install_cmd, ["--cp-address", "https://cp:5678", "--ca-cert-file", str(inputs["ca"]),
                                         "--token-file", str(inputs["token"]), "-d", str(inputs["dp"]), "-v",
                                         "name=web-1", "-v", "address=10.0.0.5", "--root", str(root)])
    assert "networking.inbound[0]" in str(r.exception)
    assert snapshot(root).keys() == {"etc", "etc/systemd", "etc/systemd/system"}


def test_transparent_proxy_writes_rules_config_and_unit(root: Path, inputs: dict[str, Path]) -> None:
    code, out = install(root, inputs, "--transparent-proxy", "--exclude-inbound-ports", "22,2222", "--redirect-dns")
    assert code == 0, out
    assert "no networking.transparentProxying section" in out
    doc = yaml.safe_load((root / "etc/dpagent/tproxy.yaml").read_text())
    assert doc == {"dpagent-user": "dpagent", "redirect-dns": True, "exclude-inbound-ports": ["22", "2222"]}
    # the real CLI's parser accepts what install writes
    build_config = pytest.importorskip("transparent_proxy.config").build_config
    cfg = build_config(doc)
    assert cfg.dpagent_user == "dpagent" and cfg.redirect_dns is True
    unit = (root / "etc/systemd/system/dpagent-tproxy.service").read_text()
    assert f"ExecStart={dpagent_bin_dir()}/transparent-proxy install --config /etc/dpagent/tproxy.yaml" in unit
    assert f"ExecStop={dpagent_bin_dir()}/transparent-proxy uninstall" in unit
    assert (root / "etc/dpagent/tproxy.yaml").stat().st_mode & 0o777 == 0o644


def test_tproxy_options_need_the_flag(root: Path, inputs: dict[str, Path]) -> None:
    code, _ = install(root, inputs, "--redirect-dns")
    assert code != 0
    assert snapshot(root).keys() == {"etc", "etc/systemd", "etc/systemd/system"}


def test_uninstall_leaves_nothing_behind(root: Path, inputs: dict[str, Path]) -> None:
    before = snapshot(root)
    assert install(root, inputs, "--transparent-proxy")[0] == 0
    (root / "var/lib/dpagent/web-1/identity").mkdir(parents=True)  # state the agent would have written
    r = CliRunner().invoke(uninstall_cmd, ["web-1", "--root", str(root)])
    assert r.exit_code == 0, r.output
    after = snapshot(root)
    after.pop("var", None)
    after.pop("var/lib", None)
    assert after == before


def test_uninstall_keeps_shared_units_while_other_instances_remain(root: Path, inputs: dict[str, Path]) -> None:
    assert install(root, inputs)[0] == 0
    assert install(root, inputs, "--name", "web-2", "--readiness-port", "9903")[0] == 0
    assert yaml.safe_load((root / "etc/dpagent/web-2/config.yaml").read_text())["dataplane"] == {
        "readinessPort": 9903}
    assert CliRunner().invoke(uninstall_cmd, ["web-1", "--root", str(root)]).exit_code == 0
    assert (root / "etc/systemd/system/dpagent@.service").exists()
    assert (root / "etc/dpagent/web-2/token").exists()
    assert not (root / "etc/dpagent/web-1").exists()


def test_uninstall_unknown_instance(root: Path) -> None:
    r = CliRunner().invoke(uninstall_cmd, ["nope", "--root", str(root)])
    assert r.exit_code != 0
    assert "no dpagent instance 'nope' is installed" in str(r.exception)


def test_reserved_and_bad_names(root: Path, inputs: dict[str, Path]) -> None:
    assert "is reserved" in str(CliRunner().invoke(install_cmd, [
        "--cp-address", "https://cp:5678", "--ca-cert-file", str(inputs["ca"]), "--token-file",
        str(inputs["token"]), "-d", str(inputs["dp"]), "-v", "name=web-1", "-v", "address=1.2.3.4", "--name", "cp",
        "--root", str(root)]).exception)
    assert "must be 1-63 letters" in str(CliRunner().invoke(install_cmd, [
        "--cp-address", "https://cp:5678", "--ca-cert-file", str(inputs["ca"]), "--token-file",
        str(inputs["token"]), "-d", str(inputs["dp"]), "-v", "name=web-1", "-v", "address=1.2.3.4", "--name",
        "../x", "--root", str(root)]).exception)
