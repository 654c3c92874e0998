"""MeshExternalService in the registry: a resource kind, not a policy, registered like one so the REST API, CLI,
`apply`, sync and `inspect` derive its names from the one list. It selects no proxy (its parsed form's targetRef
names itself); every proxy reads the mesh's external services from the context instead. Order 50: it creates
the outbound resources that the route plugins (100+) and every later policy then find by origin and service key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dpagent.controlplane.datasource import load
from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.envelope import Policy
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.meshexternalservice.api import KIND, resolved_spec, to_policy, validate
from dpagent.errors import ValidationError
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 50


class MeshExternalServicePlugin(PolicyPlugin):
    kind = KIND
    plural = "meshexternalservices"
    aliases = ("extsvc", "mes")
    order = ORDER

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        return validate(doc)

    def parse(self, doc: Any) -> Policy:
        """Validated, with its TLS data sources read now (a file on the CP host), so generation needs no I/O."""
        if isinstance(doc, Policy):
            return doc
        problems = validate(doc)
        if problems:
            raise ValidationError(f"{KIND} {doc.get('name')!r}" if isinstance(doc, dict) else KIND, problems)
        return to_policy(doc, resolved_spec(doc, load))

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> Rules:
        services = ctx.external_services
        if not services:
            return Rules()
        return Rules(warnings=tuple(p for es in services for p in es.problems))

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        if not ctx.external_services:
            return
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshexternalservice import xds
        from dpagent.controlplane.policies.meshroute.xds import mesh_protocols

        xds.configure(rs, ctx, dp, ctx.external_services, list(mesh_protocols(ctx)))
