"""Dataplane tokens: Kuma's wire format, every rejection reason with its message, and the binding rules."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpagent.controlplane import tokens
from dpagent.controlplane.tokens import DataplaneClaims, TokenError, TokenVerifier, _load_private
from dpagent.errors import EXIT_CP_REJECTED, ControlPlaneRejected

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def key() -> tokens.SigningKey:
    return tokens.generate_signing_key("default", 1)


@pytest.fixture(scope="module")
def key2() -> tokens.SigningKey:
    return tokens.generate_signing_key("default", 2)


@pytest.fixture(scope="module")
def other_mesh_key() -> tokens.SigningKey:
    return tokens.generate_signing_key("other", 1)


def _issue(key: tokens.SigningKey, **kw) -> str:
    args = {"name": "web-1", "mesh": key.mesh, "tags": {"kuma.io/service": ["web"]}, "valid_for": DAY, "now": NOW}
    args.update(kw)
    return tokens.issue_token(key, **args)


def _segments(token: str) -> tuple[dict, dict]:
    def dec(s: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    h, p, _ = token.split(".")
    return dec(h), dec(p)


def _verify(verifier: TokenVerifier, token: str, **kw) -> DataplaneClaims:
    args = {"mesh_hint": "default", "revoked": set(), "now": NOW + 60}
    args.update(kw)
    return verifier.verify(token, **args)


def test_wire_format_is_kumas(key) -> None:
    header, payload = _segments(_issue(key))
    assert header == {"alg": "RS256", "kid": "1", "typ": "JWT"}
    assert set(payload) == {"Name", "Mesh", "Tags", "Type", "jti", "iat", "nbf", "exp"}
    assert payload["Name"] == "web-1" and payload["Mesh"] == "default" and payload["Type"] == "dataplane"
    assert payload["Tags"] == {"kuma.io/service": ["web"]}
    assert uuid.UUID(payload["jti"]).version == 4
    assert payload["iat"] == NOW and payload["nbf"] == NOW - 5 and payload["exp"] == NOW + DAY


def test_token_verifiable_by_plain_pyjwt_with_public_key(key) -> None:
    """Interop: any JWT library holding the exported public key accepts our tokens (offline-signing setups)."""
    token = _issue(key, now=time.time())
    claims = jwt.decode(token, key.public_pem(), algorithms=["RS256"])
    assert claims["Name"] == "web-1"


def test_round_trip(key) -> None:
    claims = _verify(TokenVerifier([key]), _issue(key))
    assert claims.name == "web-1" and claims.mesh == "default" and claims.type == "dataplane"
    assert claims.tags == {"kuma.io/service": ["web"]}
    assert claims.exp == NOW + DAY


def test_mesh_taken_from_token_when_no_hint(key) -> None:
    assert _verify(TokenVerifier([key]), _issue(key), mesh_hint=None).mesh == "default"


def test_bearer_prefix_and_whitespace_accepted(key) -> None:
    """Token files often end with a newline; the gRPC metadata carries `Bearer <token>`."""
    token = _issue(key)
    _verify(TokenVerifier([key]), f"Bearer {token}\n")
    _verify(TokenVerifier([key]), f"{token}\n".encode())


def test_signing_key_repr_hides_pem(key) -> None:
    assert "PRIVATE" not in repr(key) and "serial=1" in repr(key)


def test_issue_rejects_mismatched_mesh_and_bad_validity(key) -> None:
    with pytest.raises(ValueError, match="mesh 'default'"):
        tokens.issue_token(key, name="a", mesh="other", tags=None, valid_for=10)
    with pytest.raises(ValueError, match="positive"):
        tokens.issue_token(key, name="a", mesh="default", tags=None, valid_for=0)


def _reject(verifier: TokenVerifier, token: str, reason: str, *fragments: str, **kw) -> TokenError:
    with pytest.raises(TokenError) as err:
        _verify(verifier, token, **kw)
    assert err.value.reason == reason, str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"
    assert isinstance(err.value, ControlPlaneRejected) and err.value.exit_code == EXIT_CP_REJECTED
    assert "eyJ" not in str(err.value)  # never echo the token
    return err.value


@pytest.mark.parametrize("bad", ["", "   \n", "abc", "a.b", "a.b.c.d", "a..c", "eyJhbGciOiJSUzI1NiJ9.eyJ9"])
def test_malformed(key, bad) -> None:
    _reject(TokenVerifier([key]), bad, "malformed", "invalid number of segments", "empty or truncated",
            "dpagent token generate")


def test_malformed_header_and_payload(key) -> None:
    _reject(TokenVerifier([key]), "!!!.e30.sig", "malformed", "not valid base64url-encoded JSON")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": "1"}).encode()).decode().rstrip("=")
    _reject(TokenVerifier([key]), f"{header}.!!!.sig", "malformed", "not valid base64url", mesh_hint=None)


def test_truncated_token(key) -> None:
    token = _issue(key)
    _reject(TokenVerifier([key]), token[: len(token) - 40], "malformed", "empty or truncated")
    _reject(TokenVerifier([key]), token[: token.rindex(".")], "malformed", "invalid number of segments")


def test_unknown_kid_after_rotation(key, key2) -> None:
    token = _issue(key2)
    _reject(TokenVerifier([key]), token, "unknown-kid",
            "there is no signing key with KID 2 for mesh default", "if the signing key was rotated, regenerate")


def test_both_keys_verify_during_rotation(key, key2) -> None:
    verifier = TokenVerifier([key, key2])
    assert verifier.kids("default") == ["1", "2"]
    _verify(verifier, _issue(key))
    _verify(verifier, _issue(key2))
    verifier.set_keys([key2])
    _reject(verifier, _issue(key), "unknown-kid", "KID 1")


def test_tampered_payload_fails(key) -> None:
    token = _issue(key)
    h, _, s = token.split(".")
    _, payload = _segments(token)
    payload["Name"] = "db-1"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    _reject(TokenVerifier([key]), f"{h}.{forged}.{s}", "signature", "altered", "another control plane")


def test_tampered_signature_fails(key) -> None:
    token = _issue(key)
    h, p, s = token.split(".")
    flipped = s[:10] + ("A" if s[10] != "A" else "B") + s[11:]
    _reject(TokenVerifier([key]), f"{h}.{p}.{flipped}", "signature", "altered")


def test_token_from_another_control_plane_fails(key) -> None:
    stranger = tokens.generate_signing_key("default", 1)
    _reject(TokenVerifier([key]), _issue(stranger), "signature", "signing key 1 of mesh default")


def test_alg_none_and_hs256_rejected(key) -> None:
    """Classic JWT downgrade attacks: 'none', and HS256 keyed with the public key."""
    payload = _segments(_issue(key))[1]
    unsigned = jwt.encode(payload, None, algorithm="none", headers={"kid": "1"})
    _reject(TokenVerifier([key]), unsigned, "algorithm", "'none'", "RS256")
    hs = jwt.encode(payload, "secret-secret-secret-secret-1234", algorithm="HS256", headers={"kid": "1"})
    _reject(TokenVerifier([key]), hs, "algorithm", "'HS256'")


def test_missing_kid(key) -> None:
    token = jwt.encode(_segments(_issue(key))[1], _load_private(key.private_pem), algorithm="RS256")
    _reject(TokenVerifier([key]), token, "kid", "no `kid` header")


def test_expired_names_time_and_command(key) -> None:
    token = _issue(key, tags={"kuma.io/service": ["web"], "version": ["v1", "v2"]})
    err = _reject(TokenVerifier([key]), token, "expired", "token expired at 2027-01-16T08:00:00Z (3h ago)",
                  "`dpagent token generate --name web-1 --mesh default --tag kuma.io/service=web "
                  "--tag version=v1,v2 --valid-for 720h`", now=NOW + DAY + 3 * 3600)
    assert "replace the token file" in str(err)


def test_expiry_boundary(key) -> None:
    token = _issue(key)
    _verify(TokenVerifier([key]), token, now=NOW + DAY - 1)
    _reject(TokenVerifier([key]), token, "expired", now=NOW + DAY)


def test_not_yet_valid_hints_clock_skew(key) -> None:
    token = _issue(key)
    _verify(TokenVerifier([key]), token, now=NOW - 4)  # nbf is back-dated 5 s
    _reject(TokenVerifier([key]), token, "not-yet-valid", "not valid until 2027-01-15T07:59:55Z (in 5m)", "clock",
            "NTP", now=NOW - 305)


def test_revoked(key) -> None:
    token = _issue(key)
    jti = _segments(token)[1]["jti"]
    err = _reject(TokenVerifier([key]), token, "revoked", f"token {jti} has been revoked",
                  "dpagent token generate --name web-1 --mesh default", revoked={"other", jti})
    assert "--valid-for 720h" in str(err)


def test_wrong_mesh(key, other_mesh_key) -> None:
    token = _issue(other_mesh_key)
    # The dataplane's mesh has a key with the same kid: still reported as a mesh mismatch, not a bad signature.
    _reject(TokenVerifier([key, other_mesh_key]), token, "mesh", "issued for mesh other",
            "dataplane is in mesh default", "--mesh default")
    _reject(TokenVerifier([other_mesh_key]), token, "mesh", "issued for mesh other")


def test_no_mesh_anywhere(key) -> None:
    payload = {**_segments(_issue(key))[1], "Mesh": ""}
    token = jwt.encode(payload, _load_private(key.private_pem), algorithm="RS256", headers={"kid": "1"})
    _reject(TokenVerifier([key]), token, "mesh", "names no mesh", mesh_hint=None)
    assert _verify(TokenVerifier([key]), token).mesh == ""  # mesh-agnostic claim, bound by the key instead


@pytest.mark.parametrize(("claim", "value", "fragment"), [
    ("Tags", {"a": "b"}, "Tags is not a map of string lists"),
    ("Tags", ["a"], "Tags"),
    ("Name", 5, "claim Name is not a string"),
    ("jti", None, "no jti claim"),
    ("exp", None, "no exp claim"),
    ("exp", "soon", "no exp claim"),
    ("nbf", "x", "claim nbf is not a number"),
])
def test_bad_claim_types(key, claim, value, fragment) -> None:
    payload = {**_segments(_issue(key))[1], claim: value}
    if value is None:
        del payload[claim]
    token = jwt.encode(payload, _load_private(key.private_pem), algorithm="RS256", headers={"kid": "1"})
    _reject(TokenVerifier([key]), token, "malformed", fragment)


def test_offline_public_key(key) -> None:
    verifier = TokenVerifier()
    verifier.add_public_key("default", "1", key.public_pem())
    assert _verify(verifier, _issue(key)).name == "web-1"


def test_verify_is_fast(key) -> None:
    """The benchmark target is 5,000/s on one core; assert a loose floor so CI noise does not flake."""
    verifier = TokenVerifier([key])
    token = _issue(key)
    n = 300
    start = time.perf_counter()
    for _ in range(n):
        verifier.verify(token, mesh_hint="default", revoked=(), now=NOW + 60)
    assert n / (time.perf_counter() - start) > 1000


# --- binding rules ---------------------------------------------------------------------------------------------

def _claims(name: str = "web-1", mesh: str = "default", tags: dict[str, list[str]] | None = None) -> DataplaneClaims:
    return DataplaneClaims(name=name, mesh=mesh, tags=tags or {}, type="dataplane", jti="j", iat=0, nbf=0, exp=1)


def test_matches_happy_paths() -> None:
    tokens.check_dataplane_matches(_claims(tags={"svc": ["web", "api"]}), name="web-1", mesh="default",
                                   tags={"svc": {"web"}, "zone": {"z1"}})
    tokens.check_dataplane_matches(_claims(name="", mesh=""), name="anything", mesh="any", tags={})


def test_matches_name_and_mesh() -> None:
    with pytest.raises(TokenError, match="token is for dataplane 'web-1' but this dataplane is named 'web-2'"):
        tokens.check_dataplane_matches(_claims(), name="web-2", mesh="default", tags={})
    with pytest.raises(TokenError, match=r"token is for mesh 'default' but this dataplane is in mesh 'prod'.*"
                                         r"--mesh prod"):
        tokens.check_dataplane_matches(_claims(), name="web-1", mesh="prod", tags={})


def test_matches_missing_tag() -> None:
    with pytest.raises(TokenError, match=r"requires tag svc \(allowed: web\) but the dataplane has no such tag"):
        tokens.check_dataplane_matches(_claims(tags={"svc": ["web"]}), name="web-1", mesh="default", tags={})


def test_matches_every_dataplane_value_must_be_allowed() -> None:
    with pytest.raises(TokenError, match=r"tag svc has value\(s\) admin that the token does not allow "
                                         r"\(token allows svc: web\); correct the Dataplane's svc tag") as err:
        tokens.check_dataplane_matches(_claims(tags={"svc": ["web"]}), name="web-1", mesh="default",
                                       tags={"svc": {"web", "admin"}})
    # The refused side must not be handed a command that would approve the identity it just tried to claim.
    assert "token generate" not in str(err.value)


def test_suggested_commands_always_bind_the_service() -> None:
    assert "--tag kuma.io/service=<service>" in tokens.generate_command("web-1", "default")
    assert "--tag kuma.io/service=web " in tokens.generate_command("web-1", "default", {"kuma.io/service": ["web"]})


_word = st.text("abcdefgh-", min_size=1, max_size=6)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(allowed=st.dictionaries(_word, st.lists(_word, min_size=1, max_size=3), max_size=3),
       actual=st.dictionaries(_word, st.sets(_word, min_size=1, max_size=3), max_size=4))
def test_matches_property(allowed, actual) -> None:
    """Accepted exactly when each token tag is present and covers every dataplane value."""
    expected = all(k in actual and actual[k] <= set(v) for k, v in allowed.items())
    try:
        tokens.check_dataplane_matches(_claims(tags=allowed), name="web-1", mesh="default", tags=actual)
        ok = True
    except TokenError:
        ok = False
    assert ok == expected


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(name=st.text(min_size=0, max_size=30),
       tags=st.dictionaries(st.text(min_size=1, max_size=10), st.lists(st.text(max_size=10), max_size=3), max_size=3))
def test_round_trip_property(key, name, tags) -> None:
    claims = _verify(TokenVerifier([key]), _issue(key, name=name, tags=tags))
    assert claims.name == name and claims.tags == tags
