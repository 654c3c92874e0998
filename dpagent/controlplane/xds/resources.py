"""One proxy's generated Envoy resources, keyed by type and name, each tagged with the origin that made it.

Policy plugins find what to edit by origin (and the inbound or service a resource serves), never by parsing
names. A resource may arrive already serialised and shared between proxies (`Resource`); editing it makes a
private copy, so a plugin can never corrupt another proxy's config and unedited resources stay shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf.message import Message

from dpagent.controlplane.xds.snapshot import Resource


class Origin(StrEnum):
    INBOUND = "inbound"  # per-inbound listeners, their routes and local clusters
    OUTBOUND = "outbound"  # outbound listeners, service clusters and endpoints
    TRANSPARENT = "transparent"  # capture listeners and passthrough clusters
    DIRECT_ACCESS = "direct-access"  # per-endpoint listeners of `directAccessServices` and their cluster
    DYNCONF = "dynconf"  # the agent's direct-response listener (DNS table)
    SECRETS = "secrets"  # the mesh trust bundle
    USER = "user"  # resources a MeshProxyPatch added


@dataclass
class Entry:
    type_url: str
    name: str
    origin: Origin
    message: Message
    shared: Resource | None = None  # set while the bytes are shared; cleared by ResourceSet.edit
    inbound: str = ""  # inbound key (address:port) the resource serves, when it serves one
    service: str = ""  # destination service, for outbound resources
    chains: Mapping[str, str] = field(default_factory=dict)  # listener: filter chain name → inbound key it serves


class ResourceSet:
    def __init__(self) -> None:
        self._by_type: dict[str, dict[str, Entry]] = {}
        self._sorted: dict[str, list[Entry]] = {}  # per type, by name; dropped when the type gains an entry

    def add(self, type_url: str, name: str, item: Message | Resource, origin: Origin, *, inbound: str = "",
            service: str = "", chains: Mapping[str, str] | None = None) -> None:
        """Add a resource; a second resource with the same type and name is a generator bug and fails loudly."""
        by_name = self._by_type.setdefault(type_url, {})
        if name in by_name:
            raise ValueError(f"{type_url.rsplit('.', 1)[-1]} {name!r} generated twice "
                             f"({by_name[name].origin} and {origin})")
        shared = item if isinstance(item, Resource) else None
        message = item.message if isinstance(item, Resource) else item
        self._sorted.pop(type_url, None)
        by_name[name] = Entry(type_url, name, origin, message, shared, inbound, service, dict(chains or {}))

    def get(self, type_url: str, name: str) -> Entry | None:
        return self._by_type.get(type_url, {}).get(name)

    def entries(self, type_url: str | None = None, origin: Origin | None = None) -> Iterator[Entry]:
        """Entries sorted by type then name, optionally one type and/or origin."""
        types = [type_url] if type_url is not None else sorted(self._by_type)
        for t in types:
            ordered = self._sorted.get(t)
            if ordered is None:  # plugins walk a type dozens of times per proxy; sort it once
                ordered = self._sorted[t] = [e for _, e in sorted(self._by_type.get(t, {}).items())]
            for e in ordered:
                if origin is None or e.origin == origin:
                    yield e

    def inbound_chains(self, listener_type: str) -> Iterator[tuple[Entry, int, str]]:
        """(listener entry, filter chain index, inbound key) for every filter chain that serves an inbound, whether
        the inbound has its own listener or is a chain of the transparent-proxy capture listener."""
        for e in self.entries(listener_type):
            if e.chains:
                for i, chain in enumerate(e.message.filter_chains):  # type: ignore[attr-defined]
                    if chain.name in e.chains:
                        yield e, i, e.chains[chain.name]

    def edit(self, entry: Entry) -> Message:
        """The entry's message, ready to mutate: a shared one is copied first (copy-on-write)."""
        if entry.shared is not None:
            copy = type(entry.message)()
            copy.CopyFrom(entry.message)
            entry.message, entry.shared = copy, None
        return entry.message

    def replace(self, entry: Entry, item: Message | Resource) -> None:
        """Swap in a new message, or a memoised shared Resource (e.g. one per (service, effective conf))."""
        entry.shared = item if isinstance(item, Resource) else None
        entry.message = item.message if isinstance(item, Resource) else item

    def remove(self, entry: Entry) -> None:
        """Drop a resource (MeshProxyPatch `Remove`); a shared one just stops being referenced by this proxy."""
        by_name = self._by_type.get(entry.type_url, {})
        if by_name.get(entry.name) is entry:
            del by_name[entry.name]
            self._sorted.pop(entry.type_url, None)

    def types(self) -> list[str]:
        return sorted(self._by_type)

    def messages(self) -> dict[str, dict[str, Message]]:
        """Plain messages by type and name (goldens, `inspect --type config`)."""
        return {t: {n: e.message for n, e in sorted(by.items())} for t, by in sorted(self._by_type.items())}

    def for_snapshot(self) -> dict[str, dict[str, Message | Resource]]:
        """Shared entries as their Resource (serialised once for every proxy), the rest as messages."""
        return {t: {n: e.shared if e.shared is not None else e.message for n, e in by.items()}
                for t, by in self._by_type.items()}
