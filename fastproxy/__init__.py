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

import typing as _typing

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

# Where each public name lives. They are loaded on first use (PEP 562), so that `import
# fastproxy.iptables` in the init container or `fastproxy probe` loads no more than it needs.
_HOME = {
    "Config": "fastproxy.config.loader",
    "ConfigError": "fastproxy.errors",
    "ConfigErrors": "fastproxy.errors",
    "FastproxyError": "fastproxy.errors",
}

if _typing.TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from fastproxy._api import (  # noqa: F401
        Decision, Policy, Problem, Proxy, compile_policy, explain_decision, inject, load_config,
        parse_config, problems, validate_config,
    )
    from fastproxy.config.loader import Config  # noqa: F401
    from fastproxy.errors import ConfigError, ConfigErrors, FastproxyError  # noqa: F401


def __getattr__(name: str) -> _typing.Any:
    if name not in __all__:
        raise AttributeError(f"module 'fastproxy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOME.get(name, "fastproxy._api")), name)
    globals()[name] = value
    return value


def __dir__() -> _typing.List[str]:
    return sorted(set(globals()) | set(__all__))
