"""YAML/JSON Envoy resources ↔ protobuf for MeshProxyPatch: which message each modification kind holds, and
loading the modules of every `@type` a value names so `Any` fields resolve without a fixed import list."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

MESSAGES: dict[str, type[Message]] = {
    "cluster": cluster_pb2.Cluster,
    "listener": listener_pb2.Listener,
    "networkFilter": listener_components_pb2.Filter,
    "httpFilter": hcm_pb2.HttpFilter,
    "virtualHost": route_components_pb2.VirtualHost,
}
_loaded: set[str] = set()


def _type_urls(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "@type" and isinstance(v, str):
                yield v
            else:
                yield from _type_urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from _type_urls(v)


def load_types(value: Any) -> None:
    """Import every `*_pb2` module of the package each `@type` lives in (xds-protos keeps one package per API
    version), so the default pool knows the type when json_format resolves the Any."""
    pool = symbol_database.Default().pool
    for url in _type_urls(value):
        full = url.rsplit("/", 1)[-1]
        package = full.rsplit(".", 1)[0]
        if package in _loaded:
            continue
        _loaded.add(package)
        try:
            pool.FindMessageTypeByName(full)
            continue
        except KeyError:
            pass
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")


def parse(kind: str, value: Any) -> Message:
    """The Envoy message of modification `kind` from its YAML value; ValueError with protobuf's reason."""
    load_types(value)
    msg = MESSAGES[kind]()
    try:
        json_format.ParseDict(value, msg)
    except (json_format.ParseError, TypeError, ValueError, KeyError) as e:
        raise ValueError(str(e)) from e
    return msg


def parse_into(value: Any, msg: Message) -> Message:
    """`value` parsed as a message of `msg`'s type (a fresh one; `msg` is only the type)."""
    load_types(value)
    out = type(msg)()
    try:
        json_format.ParseDict(value, out)
    except (json_format.ParseError, TypeError, ValueError, KeyError) as e:
        raise ValueError(str(e)) from e
    return out


def to_json(msg: Message) -> Any:
    """The protojson form (camelCase keys) JSON patches address, as Kuma's do."""
    return json_format.MessageToDict(msg)
