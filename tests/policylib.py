"""What the per-policy validation tables share (tests/unit/controlplane/policies/*/test_*_api.py): a one-item policy
document to put a bad `default` in, and the check that a refused document names exactly the expected paths.

Each policy kind's tests used to build the same envelope and compare the same paths in their own words; one builder
keeps the tables about the conf under test, and one check keeps every table as strict as the strictest was."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dpagent.model.dataplane import parse_dataplane
from dpagent.model.mesh import parse_mesh

MESH: dict[str, Any] = {"kind": "Mesh"}

# What the inbound policies' xds tests (MeshFaultInjection, MeshRateLimit, MeshTrafficPermission) configure: a mesh
# with mTLS and one dataplane `backend-1` with an HTTP inbound (service backend) and a TCP one (service db).
MTLS_MESH = parse_mesh({"type": "Mesh", "name": "default",
                        "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})
BACKEND_DP = parse_dataplane({"type": "Dataplane", "mesh": "default", "name": "backend-1", "networking": {
    "address": "10.0.0.2", "inbound": [
        {"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}},
        {"port": 5432, "servicePort": 5433, "tags": {"kuma.io/service": "db", "kuma.io/protocol": "tcp"}}]}})
BACKEND_HTTP, BACKEND_TCP = "10.0.0.2:8080", "10.0.0.2:5432"  # the inbounds' keys


def policy_doc(kind: str, conf: Any, section: str = "to", ref: dict[str, Any] | None = MESH, *,
               top: dict[str, Any] | None = None, name: str = "bad") -> dict[str, Any]:
    """A `kind` policy with one item: `conf` as the `default` of `spec.<section>[0]`, whose targetRef is `ref`
    (a `rules` item has none), under the top-level targetRef `top` when one is given."""
    item: dict[str, Any] = {"default": conf}
    if section != "rules" and ref is not None:
        item = {"targetRef": ref, **item}
    spec: dict[str, Any] = {section: [item]}
    if top is not None:
        spec = {"targetRef": top, **spec}
    return {"type": kind, "mesh": "default", "name": name, "spec": spec}


def assert_refused_at(problems: Sequence[tuple[str, str]], paths: Iterable[str]) -> None:
    """The violations name exactly `paths`, each as often as expected (a path reported twice is a defect too), and
    every one says why."""
    assert sorted(p for p, _ in problems) == sorted(paths), problems
    assert all(message for _, message in problems), problems
