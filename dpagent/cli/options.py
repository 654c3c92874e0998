"""Build click options from a settings table, so flags, env names and config keys are declared exactly once.

Options carry no defaults and no env binding: resolution (flags > env > file > defaults) happens in
dpagent.config, which also records where each value came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click
from click.core import ParameterSource

from dpagent.config import Setting

_SHORT = {"--dataplane-file": "-d", "--dataplane-var": "-v"}
_OPTIONAL_VALUE_BOOLS = {"bool"}


def settings_options(settings: Sequence[Setting]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for s in reversed([s for s in settings if s.flag]):
            assert s.flag
            decls = [s.flag, *([_SHORT[s.flag]] if s.flag in _SHORT else []), s.attr]
            help_text = s.help + (f"  [env {s.env}]" if s.env else "") + f"  [key {s.key}]"
            if s.kind in _OPTIONAL_VALUE_BOOLS:
                # `--skip-verify` alone means true; `--skip-verify=false` also works, as with kuma-dp (cobra).
                opt = click.option(*decls, is_flag=False, flag_value="true", default=None, help=help_text,
                                   metavar="[true|false]")
            elif s.kind in ("map", "list"):
                opt = click.option(*decls, multiple=True, default=None, help=help_text,
                                   metavar="NAME=VALUE" if s.kind == "map" else "VALUE")
            else:
                opt = click.option(*decls, default=None, help=help_text, show_default=False)
            fn = opt(fn)
        return click.option("--config", "config_file", default=None, envvar="DPAGENT_CONFIG",
                            help="YAML config file (keys as shown by `dpagent config show`)  [env DPAGENT_CONFIG]")(fn)

    return decorate


def given_flags(ctx: click.Context, params: Mapping[str, Any], settings: Sequence[Setting]) -> dict[str, Any]:
    """Only the values typed on the command line: they are the top layer of the precedence."""
    out = {}
    for s in settings:
        if s.flag and ctx.get_parameter_source(s.attr) is ParameterSource.COMMANDLINE:
            out[s.attr] = params[s.attr]
    return out
