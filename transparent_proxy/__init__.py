"""Transparent proxying for dpagent on VMs: iptables rules that steer an application's TCP (and DNS) through Envoy.

The package is split so the interesting part is pure: `config` (user intent) + `host` (probed facts) go into
`render` (restore text); `apply` is the only module that changes the system, through the `runner` seam.
"""

from transparent_proxy.config import ConfigError, TProxyConfig

__all__ = ["ConfigError", "TProxyConfig"]
