"""The policy plugin protocol: what one policy kind must provide so the registry, the API and xDS can use it.

Matching (which policies reach a proxy, in which order) is done generically in matching.py and handed to the
plugin already sorted, so a plugin only turns matched policies into rules for one proxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import Mesh
from dpagent.model.targetref import TargetRef


class TargetedPolicy(Protocol):
    """The two attributes generic matching reads from any parsed policy."""

    @property
    def name(self) -> str: ...

    @property
    def target_ref(self) -> TargetRef: ...


class MeshView(Protocol):
    """The mesh-wide inputs a plugin may consult (xds.proxy.MeshContext satisfies it)."""

    @property
    def mesh(self) -> Mesh: ...

    @property
    def dataplanes(self) -> Sequence[Dataplane]: ...

    @property
    def policies(self) -> Mapping[str, Sequence[Any]]: ...


@dataclass(frozen=True)
class Rules:
    """Base of every plugin's per-proxy output; warnings are shown by `inspect`, never raised."""

    warnings: tuple[str, ...] = ()


class PolicyPlugin(Protocol):
    kind: str
    order: int

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        """Every violation with its path; the REST API and CLI print them all."""
        ...

    def parse(self, doc: Any) -> Any:
        """Typed policy from a validated document."""
        ...

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Sequence[Any]) -> Rules:
        """Turn the policies matched for `dp` (least → most specific) into this proxy's rules."""
        ...
