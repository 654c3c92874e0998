"""`dpagent apply | get | delete` of Secrets against a real `dpagent cp run`: the data goes in, never comes out,
and the database file and the CP log hold it nowhere in clear."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from test_cli_doors import cli
from testlib import RunningCp

VALUE = "s3cr3t-db-password-" + "x" * 12
B64 = base64.b64encode(VALUE.encode()).decode()


def test_secret_lifecycle_through_the_cli(local_cp: RunningCp, tmp_path: Path) -> None:
    f = tmp_path / "secret.yaml"
    f.write_text(f"type: Secret\nname: db-password\nmesh: default\ndata: {B64}\n")
    out = cli(local_cp, "apply", "-f", str(f))
    assert out.returncode == 0 and "Secret 'db-password' created" in out.stdout, out

    listed = cli(local_cp, "get", "secrets")
    assert listed.returncode == 0 and "db-password" in listed.stdout, listed
    assert "dataplane-token-signing-key" not in listed.stdout  # the CP's own secrets stay out of sight
    one = cli(local_cp, "get", "secret", "db-password", "-o", "yaml")
    assert one.returncode == 0 and "data: <redacted>" in one.stdout and B64 not in one.stdout, one
    # What get printed can be applied back without losing the value.
    f.write_text(one.stdout)
    assert cli(local_cp, "apply", "-f", str(f)).returncode == 0

    # The CP holds the database locked: read its files as a backup would (the WAL included).
    raw = b"".join(p.read_bytes() for p in sorted(local_cp.data_dir.glob("store.db*")))
    assert b"db-password" in raw and B64.encode() not in raw and VALUE.encode() not in raw
    assert b"dataplane-token-signing-key" in raw and b"LS0tLS1CRUdJT" not in raw  # base64 of "-----BEGIN"
    key_file = local_cp.data_dir / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"type: Secret\nname: other\nmesh: default\ndata: '{VALUE}!'\n")
    out = cli(local_cp, "apply", "-f", str(bad))
    assert out.returncode == 2 and "data: must be base64" in out.stderr and VALUE not in out.stderr, out

    out = cli(local_cp, "delete", "secret", "db-password")
    assert out.returncode == 0, out
    assert "no secrets in mesh 'default'" in cli(local_cp, "get", "secrets").stdout
    assert VALUE not in local_cp.log_text() and B64 not in local_cp.log_text()
