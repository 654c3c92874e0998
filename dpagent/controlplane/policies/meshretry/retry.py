"""A merged MeshRetry conf → Envoy's RouteAction.retry_policy and TcpProxy.max_connect_attempts (reference
kuma-policies.md §5). Pure, so the golden tests feed it confs directly.

Which section applies follows the destination's protocol exactly as Kuma does: `http` only for `http`, `grpc`
only for `grpc`, `tcp` only for `tcp` (an `http2` destination gets no retry policy).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.host.omit_host_metadata.v3 import omit_host_metadata_config_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from dpagent.controlplane.policies.meshretry.api import (
    GRPC,
    GRPC_RETRY_ON,
    HTTP,
    HTTP_RETRY_ON,
    OMIT_HOSTS_WITH_TAGS,
    OMIT_PREVIOUS_HOSTS,
    BackOff,
    Conf,
    RateLimitedBackOff,
    retry_on_method,
    retry_on_status,
)
from dpagent.controlplane.policies.meshroute.headers import EXACT, header_matcher
from dpagent.controlplane.xds.builders.core import pack, seconds
from dpagent.durations import parse_duration

HTTP_DEFAULT_RETRY_ON = "gateway-error,connect-failure,refused-stream"
GRPC_DEFAULT_RETRY_ON = "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"
GRPC_DEFAULT_BASE_INTERVAL = 0.025
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
OMIT_HOST_METADATA = "envoy.retry_host_predicates.omit_host_metadata"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
DEFAULT_UPDATE_FREQUENCY = 2
_FORMATS = {"Seconds": rc.RetryPolicy.SECONDS, "UnixTimestamp": rc.RetryPolicy.UNIX_TIMESTAMP}


def retry_policy(conf: Conf, protocol: str) -> rc.RetryPolicy | None:
    """The retry policy for a destination of `protocol`, or None when the conf leaves it without one (no section
    for that protocol, or numRetries 0, which Kuma reads as "no retries")."""
    if protocol == "http" and conf.http is not None:
        return http_retry_policy(conf.http)
    if protocol == "grpc" and conf.grpc is not None:
        return grpc_retry_policy(conf.grpc)
    return None


def max_connect_attempts(conf: Conf, protocol: str) -> int | None:
    return conf.tcp.max_connect_attempt if protocol == "tcp" and conf.tcp is not None else None


def http_retry_policy(http: HTTP) -> rc.RetryPolicy | None:
    if http.num_retries == 0:
        return None
    policy = _common(http.num_retries, http.per_try_timeout, http.back_off, http.rate_limited_back_off, None)
    tokens: list[str] = []
    for word in http.retry_on or ():
        status, method = retry_on_status(word), retry_on_method(word)
        if status is not None:
            policy.retriable_status_codes.append(status)
            tokens.append("retriable-status-codes")
        elif method is not None:
            policy.retriable_request_headers.append(header_matcher(":method", EXACT, method))
        else:
            tokens.append(HTTP_RETRY_ON[word])
    # Only HttpMethod words (a filter, not a condition) keep the default conditions, as an unset list does.
    policy.retry_on = ",".join(dict.fromkeys(tokens)) if tokens else HTTP_DEFAULT_RETRY_ON
    policy.retriable_headers.extend(header_matcher(h.name, h.type, h.value) for h in http.retriable_response_headers
                                    or ())
    policy.retriable_request_headers.extend(header_matcher(h.name, h.type, h.value)
                                            for h in http.retriable_request_headers or ())
    for sel in http.host_selection or ():
        if sel.predicate == OMIT_PREVIOUS_HOSTS:
            policy.retry_host_predicate.append(rc.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())))
        elif sel.predicate == OMIT_HOSTS_WITH_TAGS:
            fields = struct_pb2.Struct()
            fields.update(dict(sorted((sel.tags or {}).items())))
            metadata = base_pb2.Metadata(filter_metadata={"envoy.lb": fields})
            policy.retry_host_predicate.append(rc.RetryPolicy.RetryHostPredicate(
                name=OMIT_HOST_METADATA, typed_config=pack(
                    omit_host_metadata_config_pb2.OmitHostMetadataConfig(metadata_match=metadata))))
        else:
            policy.retry_priority.CopyFrom(rc.RetryPolicy.RetryPriority(
                name=PREVIOUS_PRIORITIES, typed_config=pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(
                    update_frequency=sel.update_frequency or DEFAULT_UPDATE_FREQUENCY))))
    if http.host_selection_max_attempts is not None:
        policy.host_selection_retry_max_attempts = http.host_selection_max_attempts
    return policy


def grpc_retry_policy(grpc: GRPC) -> rc.RetryPolicy | None:
    if grpc.num_retries == 0:
        return None
    policy = _common(grpc.num_retries, grpc.per_try_timeout, grpc.back_off, grpc.rate_limited_back_off,
                     GRPC_DEFAULT_BASE_INTERVAL)
    policy.retry_on = (",".join(dict.fromkeys(GRPC_RETRY_ON[w] for w in grpc.retry_on)) if grpc.retry_on
                       else GRPC_DEFAULT_RETRY_ON)
    return policy


def _common(num_retries: int | None, per_try: str | None, back_off: BackOff | None,
            limited: RateLimitedBackOff | None, default_base: float | None) -> rc.RetryPolicy:
    policy = rc.RetryPolicy()
    if num_retries is not None:
        policy.num_retries.CopyFrom(wrappers_pb2.UInt32Value(value=num_retries))
    if per_try is not None:
        policy.per_try_timeout.CopyFrom(seconds(parse_duration(per_try)))
    if back_off is not None:
        base = parse_duration(back_off.base_interval) if back_off.base_interval is not None else default_base
        top = parse_duration(back_off.max_interval) if back_off.max_interval is not None else None
        if base is None and top is not None:
            # Envoy requires a base interval; Kuma leaves it out for HTTP (its NACK is unverified). We take the
            # gRPC default, capped by maxInterval, so a user's maxInterval-only backOff is never refused.
            base = min(GRPC_DEFAULT_BASE_INTERVAL, top)
        if base is not None:
            policy.retry_back_off.base_interval.CopyFrom(seconds(base))
        if top is not None:
            policy.retry_back_off.max_interval.CopyFrom(seconds(top))
    if limited is not None:
        rl = policy.rate_limited_retry_back_off
        rl.reset_headers.extend(rc.RetryPolicy.ResetHeader(name=h.name, format=_FORMATS[h.format])
                                for h in limited.reset_headers)
        if limited.max_interval is not None:
            rl.max_interval.CopyFrom(seconds(parse_duration(limited.max_interval)))
    return policy
