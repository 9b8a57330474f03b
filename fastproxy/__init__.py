"""fastproxy: a transparent egress sidecar for a service mesh, compatible with FSM egress.

The data plane (fastproxy._core) is C: epoll workers relaying with splice(). This package is the
control plane: configuration, decision tables, process lifecycle, interception rules.

The public API is what `__all__` lists (README "Python library"): everything else, modules
included, is internal and may change in any release. Before 1.0 the public names may change in a
minor release (0.x -> 0.y), said in the release notes; within one 0.x series they stay compatible.

    import fastproxy
    cfg = fastproxy.load_config("config/", service_account="curl", namespace="curl")
    fastproxy.explain_decision(cfg, "198.51.100.7:80", host="httpbin.org", path="/get").action
"""

__version__ = "0.1.0"

from fastproxy._api import (  # noqa: E402 - __version__ first: the modules below read it
    Policy, Problem, Proxy, compile_policy, explain_decision, inject, load_config, parse_config, problems,
    validate_config,
)
from fastproxy.config.loader import Config  # noqa: E402
from fastproxy.decision import Decision  # noqa: E402
from fastproxy.errors import ConfigError, ConfigErrors, FastproxyError  # noqa: E402

__all__ = [
    "Config",
    "ConfigError",
    "ConfigErrors",
    "Decision",
    "FastproxyError",
    "Policy",
    "Problem",
    "Proxy",
    "compile_policy",
    "explain_decision",
    "inject",
    "load_config",
    "parse_config",
    "problems",
    "validate_config",
]
