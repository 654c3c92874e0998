"""The subprocess seam: every iptables binary dpagent runs goes through a Runner.

`SubprocessRunner` runs the real thing (optionally prefixed, e.g. `ip netns exec NS` for tests and the bench);
`FakeRunner` records calls and answers from a script so apply's ordering and rollback are testable without root.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> Result:
        """Run argv to completion; a missing binary or timeout becomes a non-zero Result, never an exception."""
        ...


@dataclass
class SubprocessRunner:
    """Runs commands for real; `prefix` lets tests run the same code inside a network namespace."""

    prefix: Sequence[str] = ()

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> Result:
        cmd = [*self.prefix, *argv]
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            return Result(127, "", f"{cmd[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{' '.join(cmd)} timed out after {timeout:g}s (xtables lock held?)")
        return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]
    input: str | None


Handler = Callable[[tuple[str, ...], str | None], Result | None]


@dataclass
class FakeRunner:
    """Records every call; each handler may answer (return a Result) or pass (return None). Default: success,
    except that a bare `<save binary>` call prints `saves[binary]` (the ruleset the fake host "has")."""

    handlers: list[Handler] = field(default_factory=list)
    saves: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> Result:
        args = tuple(argv)
        self.calls.append(Call(args, input))
        for handler in self.handlers:
            res = handler(args, input)
            if res is not None:
                return res
        if args[0] in self.saves and len(args) == 1:
            return Result(0, self.saves[args[0]])
        return Result(0)

    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.calls]

    def fail_when(self, predicate: Callable[[tuple[str, ...], str | None], bool], result: Result) -> None:
        """Answer `result` to every call for which predicate(argv, input) is true."""
        self.handlers.append(lambda a, i: result if predicate(a, i) else None)
