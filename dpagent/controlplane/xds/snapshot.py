"""Immutable per-proxy xDS snapshots whose resources are serialised once and shared between proxies.

Most of a proxy's config is identical across a mesh, so a `Resource` carries its wire bytes (already framed as a
`DiscoveryResponse.resources` entry) and one `Resource` object can sit in a thousand snapshots at the cost of one
serialisation. Versions are content hashes, so rebuilding an unchanged config yields the same version and no push.
Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX: Final = "type.googleapis.com/"
CLUSTER: Final = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER: Final = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE: Final = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE: Final = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
VIRTUAL_HOST: Final = _PREFIX + "envoy.config.route.v3.VirtualHost"
SECRET: Final = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME: Final = _PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG: Final = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

# Envoy must know a cluster (and its endpoints) before a listener or route points at it, otherwise traffic
# hits "no cluster" while the proxy converges; this is the order go-control-plane uses in ADS mode.
RESPONSE_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, VIRTUAL_HOST, SECRET, RUNTIME,
                         EXTENSION_CONFIG)
# In SotW these types are always sent whole: a missing resource means "delete it".
WILDCARD_TYPES: Final = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE, RUNTIME})


def response_rank(type_url: str) -> tuple[int, str]:
    """Sort key that puts known types in RESPONSE_ORDER and any other type after them, deterministically."""
    try:
        return (RESPONSE_ORDER.index(type_url), "")
    except ValueError:
        return (len(RESPONSE_ORDER), type_url)


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; hand-rolled because responses are framed from cached bytes, not messages."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2): tag, length, payload."""
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def content_version(items: Iterable[tuple[str, bytes]]) -> str:
    """Version of a set of resources: a hash over (name, digest) sorted by name, so order never matters."""
    h = hashlib.blake2b(digest_size=12)
    for name, digest in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digest)
    return h.hexdigest()


class Resource:
    """One named xDS resource, serialised exactly once however many snapshots share it.

    It keeps only the framed bytes: a snapshot resource that `keep_message=False` built drops its message (a parsed
    protobuf is several times the size of its bytes, and a thousand proxies' own listeners and routes were most of
    the CP's memory) and re-parses it on the rare read (tests). Shared resources that generators edit keep theirs.
    """

    __slots__ = ("_any", "_message", "_offset", "digest", "entry", "name", "type_url")

    def __init__(self, name: str, message: Message, type_url: str | None = None, *, keep_message: bool = True) -> None:
        self.name = name
        self.type_url = type_url or _PREFIX + message.DESCRIPTOR.full_name
        # deterministic=True keeps map fields (e.g. metadata) in a stable order, so equal configs hash equal.
        payload = message.SerializeToString(deterministic=True)
        any_bytes = length_delimited(1, self.type_url.encode()) + length_delimited(2, payload)
        # Framed as field 2 of DiscoveryResponse: a response body is then a plain join of shared bytes.
        self.entry: bytes = length_delimited(2, any_bytes)
        self._offset = len(self.entry) - len(payload)  # the payload is the entry's tail
        self.digest: bytes = hashlib.blake2b(payload, digest_size=16).digest()
        self._message: Message | None = message if keep_message else None
        self._any: any_pb2.Any | None = None

    @property
    def payload(self) -> bytes:
        return self.entry[self._offset:]

    @property
    def message(self) -> Message:
        if self._message is None:
            from google.protobuf import symbol_database

            cls = symbol_database.Default().GetSymbol(self.type_url[len(_PREFIX):])
            return cls.FromString(self.payload)  # type: ignore[no-any-return]
        return self._message

    @property
    def any(self) -> any_pb2.Any:
        """The packed Any, built on demand: the server never needs it, only tests and `inspect` do."""
        if self._any is None:
            self._any = any_pb2.Any(type_url=self.type_url, value=self.payload)
        return self._any

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, {self.type_url.rsplit('.', 1)[-1]}, {len(self.entry) - self._offset}B)"


class Snapshot:
    """Everything one proxy should have, per type URL, with a content-hash version per type computed once.

    A type that is absent is "not ready": a proxy that asks for it gets no answer yet. A type that is present but
    empty is an answer ("you have none"), which Envoy needs for CDS/LDS to finish initialising.
    """

    __slots__ = ("_bodies", "_names", "_resources", "_subsets", "_versions")

    def __init__(self, resources: Mapping[str, Mapping[str, Resource]]) -> None:
        self._resources: dict[str, dict[str, Resource]] = {}
        self._versions: dict[str, str] = {}
        for type_url in sorted(resources):
            by_name = dict(sorted(resources[type_url].items()))
            for name, res in by_name.items():
                if res.type_url != type_url or res.name != name:
                    raise ValueError(f"resource {res.name!r} ({res.type_url}) filed under {type_url} / {name!r}")
            self._resources[type_url] = by_name
            self._versions[type_url] = content_version((n, r.digest) for n, r in by_name.items())
        self._names: dict[str, frozenset[str]] = {t: frozenset(r) for t, r in self._resources.items()}
        self._bodies: dict[str, bytes] = {}
        self._subsets: dict[tuple[str, frozenset[str]], tuple[str, bytes, frozenset[str]]] = {}

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message | Resource]]) -> Snapshot:
        """Snapshot from messages or ready Resources; pass Resources to share their bytes between proxies."""
        out: dict[str, dict[str, Resource]] = {}
        for type_url, by_name in resources.items():
            out[type_url] = {
                name: m if isinstance(m, Resource) else Resource(name, m, type_url, keep_message=False)
                for name, m in by_name.items()
            }
        return cls(out)

    @property
    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def types(self) -> list[str]:
        return sorted(self._resources, key=response_rank)

    def version(self, type_url: str) -> str | None:
        return self._versions.get(type_url)

    def resources(self, type_url: str) -> dict[str, Resource]:
        return self._resources.get(type_url, {})

    def names(self, type_url: str) -> frozenset[str]:
        return self._names.get(type_url, frozenset())

    def __contains__(self, type_url: object) -> bool:
        return type_url in self._resources

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self._versions == other._versions

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._versions.items())))

    def select(self, type_url: str, names: frozenset[str] | None) -> tuple[str, bytes, frozenset[str]]:
        """(version, framed resource entries, names sent) for a request: all of them, or the named subset.

        The full set is cached per type, so a wildcard push of a shared snapshot costs one join per snapshot;
        a subset that covers every resource reuses the full version so `inspect` can compare it to the snapshot.
        """
        by_name = self._resources.get(type_url, {})
        have = self._names.get(type_url, frozenset())
        if names is None or have <= names:
            body = self._bodies.get(type_url)
            if body is None:
                body = self._bodies[type_url] = b"".join(r.entry for r in by_name.values())
            return self._versions.get(type_url, ""), body, have
        hit = self._subsets.get((type_url, names))
        if hit is None:  # a subscription is asked again on every push of the type: hash and join it once
            chosen = sorted(names & have)
            picked = [by_name[n] for n in chosen]
            version = content_version((r.name, r.digest) for r in picked)
            hit = self._subsets[(type_url, names)] = (version, b"".join(r.entry for r in picked), frozenset(chosen))
        return hit


def encode_response(type_url: str, version: str, body: bytes, nonce: str) -> bytes:
    """A serialised DiscoveryResponse built from pre-framed resource entries; fields in protobuf field order."""
    return b"".join((
        length_delimited(1, version.encode()) if version else b"",
        body,
        length_delimited(4, type_url.encode()),
        length_delimited(5, nonce.encode()),
    ))
