"""fastproxy: a transparent egress sidecar for a service mesh, compatible with FSM egress.

The data plane (fastproxy._core) is C: epoll workers relaying with splice(). This package is the
control plane: configuration, decision tables, process lifecycle, interception rules.
"""

__version__ = "0.1.0"
