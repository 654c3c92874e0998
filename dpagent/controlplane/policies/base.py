"""What one policy kind provides so the registry, the REST API, the CLI, sync and xDS generation can use it.

A plugin declares its names, Kuma order and spec shape, validates its own `default` conf, turns generically
matched policies into typed rules for one proxy (`rules`), and edits the proxy's ResourceSet (`apply`). Matching
and merging are not its business (matching.py, merge.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dpagent.controlplane.policies.envelope import Policy, Shape, parse_policy, validate_policy
from dpagent.controlplane.policies.matching import Matched
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh

if TYPE_CHECKING:
    from dpagent.controlplane.policies.meshexternalservice.api import ExternalService
    from dpagent.controlplane.xds.resources import ResourceSet


class MeshView(Protocol):
    """The mesh-wide inputs a plugin may consult (xds.proxy.MeshContext satisfies it)."""

    @property
    def mesh(self) -> Mesh: ...

    @property
    def dataplanes(self) -> Sequence[Dataplane]: ...

    @property
    def vips(self) -> Mapping[str, str]:
        """Mesh service → virtual IP."""
        ...

    @property
    def external_services(self) -> Sequence[ExternalService]:
        """The mesh's MeshExternalServices, generation-ready (sorted by name)."""
        ...

    def memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """A value derived from the mesh only, computed once per mesh change (see xds.context.MeshContext)."""
        ...

    def dp_memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """A value derived from the dataplanes only (never a policy): kept across policy-only changes."""
        ...

    def dp_shared(self, key: Hashable, type_url: str, name: str, build: Callable[[], Any]) -> Any:
        """A serialised resource built from the dataplanes only, shared by every proxy that asks with `key`."""
        ...


@dataclass(frozen=True)
class Rules:
    """Base of every plugin's per-proxy output; warnings are shown by `inspect`, never raised."""

    warnings: tuple[str, ...] = ()

    def inbound_conf(self, key: str) -> Any:
        """The effective conf on inbound `key` (address:port) for `inspect`, as a typed struct or None."""
        return None

    def outbound_conf(self, service: str) -> Any:
        """The effective conf toward `service` for `inspect`, as a typed struct or None."""
        return None

    def needs_generation(self) -> bool:
        """True when some warnings are only known once `apply` has run on the generated resources (a patch
        whose JSON pointer does not exist); `inspect` then generates the proxy before reading them."""
        return False

    def generation_warnings(self) -> list[str]:
        """Warnings `apply` found; empty until it has run."""
        return []


class PolicyPlugin:
    """Subclass per kind and set the class attributes; override `rules` and `apply`."""

    kind: str = ""
    plural: str = ""  # REST path segment
    aliases: tuple[str, ...] = ()  # CLI names besides the kind and plural: Kuma's short name (`mtp`) and friends
    order: int = 0  # Kuma's plugin order (reference §1.7); unique
    shape: Shape = Shape(sections=())

    def validate_conf(self, v: Any, conf: Mapping[str, Any], path: str, section: str) -> None:
        """Record every problem with one `default` block found under `section` (to/from/rules/default)."""

    def extra_problems(self, doc: Any) -> list[tuple[str, str]]:
        """Checks of the whole document that neither the shape nor one `default` block can make (e.g. a conf field
        allowed only under one top-level targetRef kind), as (path, message)."""
        return []

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        """Every violation with its path; the REST API and CLI print them all."""
        return validate_policy(self.kind, self.shape, self.validate_conf, doc) + self.extra_problems(doc)

    def parse(self, doc: Any) -> Policy:
        if isinstance(doc, Policy):
            return doc
        return parse_policy(self.kind, self.shape, self.validate_conf, doc, self.validate(doc))

    def initial_policies(self, mesh: str) -> list[dict[str, Any]]:
        """Policy documents Kuma creates with every new mesh (e.g. `mesh-timeout-all-<mesh>`); the CP applies them
        when a Mesh is created unless its `skipCreatingInitialPolicies` lists `*` or this kind."""
        return []

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> Rules:
        """Turn the generically matched policies into this proxy's typed rules."""
        return Rules()

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        """Edit the resources of the origins this policy cares about; runs in registry order."""
