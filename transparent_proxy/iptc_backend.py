"""Optional backend (`--backend python-iptables`): apply the same restore text through libiptc instead of a binary.

Legacy only: libiptc talks to the x_tables kernel API, so on an nf_tables host its rules would land in a
second store that `iptables` does not show (reference §4). Reading the ruleset still uses the legacy
`*-save` binary. python-iptables is imported only when this backend is chosen.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from transparent_proxy.config import ConfigError
from transparent_proxy.runner import Result

_ADDR_OPTS = {"-p": "protocol", "-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface"}


def load_iptc() -> Any:
    """Import python-iptables or explain how to get it."""
    try:
        import iptc  # type: ignore[import-not-found]
    except ImportError as e:
        raise ConfigError(["--backend python-iptables: the python-iptables package is not installed; run "
                           "`pip install 'dpagent[iptc]'` or use --backend iptables-restore (the default)"]) from e
    except Exception as e:  # libiptc/libxtables missing or wrong ABI
        raise ConfigError([f"--backend python-iptables: python-iptables cannot load libiptc ({e}); install the "
                           "legacy iptables libraries or use --backend iptables-restore"]) from e
    return iptc


def build_rule(iptc: Any, family: int, spec: str) -> Any:
    """Turn '-p tcp -m owner ! --uid-owner 5 -j REDIRECT --to-ports 15001' into an iptc Rule."""
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    tokens = shlex.split(spec)
    current: Any = None
    negate = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in _ADDR_OPTS:
            setattr(rule, _ADDR_OPTS[tok], ("!" if negate else "") + tokens[i + 1])
            i += 2
        elif tok == "-m":
            current = rule.create_match(tokens[i + 1])
            i += 2
        elif tok == "-j":
            current = rule.create_target(tokens[i + 1])
            i += 2
        elif tok.startswith("--"):
            values: list[str] = []
            i += 1
            while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                values.append(tokens[i])
                i += 1
            if current is None or (tok in ("--dport", "--sport") and current.name not in ("tcp", "udp")):
                current = rule.create_match(rule.protocol.lstrip("!"))  # implicit -m tcp/udp, as iptables does
            current.set_parameter(tok[2:], ("!" if negate else "") + " ".join(values))
        else:
            raise ValueError(f"unsupported token {tok!r}")
        negate = False
    return rule


@dataclass
class IptcRestorer:
    """Implements apply.Restorer for the restore-text subset dpagent writes (chains, -A/-D/-F/-X, COMMIT)."""

    def restore(self, family: int, text: str, *, test: bool, noflush: bool) -> Result:
        iptc = load_iptc()
        table: Any = None
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("*"):
                    table = (iptc.Table6 if family == 6 else iptc.Table)(line[1:])
                    table.autocommit = False
                    table.refresh()
                    if not noflush:
                        table.flush()
                elif line == "COMMIT":
                    if not test:
                        table.commit()
                    table.refresh()
                    table.autocommit = True
                elif line.startswith(":"):
                    name, policy = [*line[1:].split(), "-"][:2]
                    if table.builtin_chain(name):
                        if policy != "-":
                            iptc.Chain(table, name).set_policy(policy)
                    elif table.is_chain(name):
                        iptc.Chain(table, name).flush()
                    else:
                        table.create_chain(name)
                else:
                    op, chain, *rest = line.split(None, 2)
                    spec = rest[0] if rest else ""
                    if op == "-F":
                        iptc.Chain(table, chain).flush()
                    elif op == "-X":
                        table.delete_chain(chain)
                    elif op == "-A":
                        iptc.Chain(table, chain).append_rule(build_rule(iptc, family, spec))
                    elif op == "-D":
                        iptc.Chain(table, chain).delete_rule(build_rule(iptc, family, spec))
                    else:
                        raise ValueError(f"unsupported command {op}")
            except Exception as e:
                if table is not None:
                    table.refresh()
                    table.autocommit = True
                return Result(1, "", f"python-iptables: line {n} failed: {e}")
        return Result(0)
