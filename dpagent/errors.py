"""One error tree for the whole project.

Every error carries the exit code the CLI uses, so that library code can fail precisely without knowing it runs
under a CLI, and so that exit codes stay documented in one place (see EXIT_CODES and README).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_CP_REJECTED = 3
EXIT_CP_UNREACHABLE = 4
EXIT_ENVOY = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "stopped cleanly (after a drain, or the command succeeded)",
    EXIT_INTERNAL: "unexpected internal error (a bug: please report it with the log)",
    EXIT_CONFIG: "bad flags, environment, config file or Dataplane resource; a port already in use",
    EXIT_CP_REJECTED: "the control plane rejected the request (token, validation, TLS trust); retrying cannot help",
    EXIT_CP_UNREACHABLE: "the control plane stayed unreachable or failing for the whole retry window",
    EXIT_ENVOY: "Envoy is missing, unsupported, or kept crashing (its last error lines are printed)",
    EXIT_INTERRUPTED: "a third stop signal ended the agent at once, without a drain",
}


class DpAgentError(Exception):
    """Base class. `str(err)` is the complete user-facing message: what is wrong and how to fix it."""

    exit_code: int = EXIT_INTERNAL


class ConfigError(DpAgentError):
    exit_code = EXIT_CONFIG


class ValidationError(ConfigError):
    """A resource failed validation; carries every violation, not just the first."""

    def __init__(self, what: str, violations: list[tuple[str, str]]) -> None:
        self.what = what
        self.violations = violations
        lines = [f"{what} is invalid ({len(violations)} problem{'s' if len(violations) != 1 else ''}):"]
        lines += [f"  - {path}: {msg}" for path, msg in violations]
        super().__init__("\n".join(lines))


class PortInUseError(ConfigError):
    def __init__(self, what: str, address: str, port: int, flag: str) -> None:
        super().__init__(
            f"port {port} on {address} ({what}) is already in use by another process; "
            f"pass {flag} to move it (each agent on a host needs its own)"
        )


class ControlPlaneRejected(DpAgentError):
    exit_code = EXIT_CP_REJECTED


class ControlPlaneUnavailable(DpAgentError):
    exit_code = EXIT_CP_UNREACHABLE


class EnvoyError(DpAgentError):
    exit_code = EXIT_ENVOY


class NotFound(DpAgentError):
    exit_code = EXIT_CONFIG


class Conflict(DpAgentError):
    exit_code = EXIT_CONFIG
