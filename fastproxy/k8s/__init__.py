"""fastproxy in Kubernetes: `fastproxy inject` (pod templates get the interception init container
and the sidecar, as FSM's injector adds them) and `fastproxy config init` (the MeshConfig and
ConfigMaps `fsm install` would write, from FSM's Helm value names).

Both work on plain YAML offline; nothing here talks to a cluster.
"""
