"""fastproxy's benchmark suite: the sidecar against direct, HAProxy, socat and a Python relay,
in network namespaces, reached through the interception rules as in a pod. Run `sudo bench/run`."""
