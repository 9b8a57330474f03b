"""The bounds every configuration load stays within, in one place (README: "Bounded
configuration"). A load that exceeds one is refused with a ConfigError naming the file (and, where
it applies, the object and field); nothing of it is used.

The values leave a wide margin over real configurations (FSM's largest objects are a few hundred
lines; 100,000 hosts in one Egress are about 3 MiB of YAML and 100,000 nodes) while keeping a
refused input cheap: a file over the size cap is refused from its `stat()` without being read, and
depth, alias expansion, node and document counts are checked on the parser's event stream before
any object is built.
"""
from __future__ import annotations

MiB = 1 << 20

#: bytes of one configuration file (checked with stat() before reading, and while reading)
MAX_FILE_BYTES = 8 * MiB
#: bytes of all the files of one load (a folder, or every --config path together)
MAX_TOTAL_BYTES = 32 * MiB
#: configuration files in one load (a folder is not recursed, but may hold many files)
MAX_FILES = 1000
#: nesting of mappings/sequences in one document, aliases expanded (Kubernetes objects with
#: OpenAPI schemas reach ~40; Python's own recursion limit is 1000)
MAX_DEPTH = 100
#: mapping keys + values and sequence items of one load, YAML aliases counted as what they
#: expand to (an alias bomb is refused here). Building the objects of a YAML load costs up to
#: 700 bytes a node at its peak (330,000 one-line hosts: 180 MB, given back after the load)
MAX_NODES = 500_000
#: characters of one string (a `kubectl.kubernetes.io/last-applied-configuration` annotation of
#: a large object is the longest string real manifests carry)
MAX_SCALAR_CHARS = 1 * MiB
#: documents of one load, `kind: List` items and empty `---` documents included
MAX_DOCUMENTS = 10_000
#: hosts named by all Egress objects and Pipy matches together (100,000 must load)
MAX_HOSTS = 200_000
#: HTTP route matches of all HTTPRouteGroups (`spec.matches`)
MAX_ROUTES = 10_000
#: routes as the data plane holds them: each Egress host times the matches of its route groups,
#: plus the `RouteRules` of every Pipy host (each is a compiled regex in the C table)
MAX_ROUTE_ENTRIES = 200_000
#: characters of all the strings of one load, YAML aliases expanded: without it, 500,000 aliases
#: of one 1 MiB string would pass the node cap and make `GET /config_dump` half a terabyte
MAX_TEXT_CHARS = 32 * MiB
#: errors one load reports (the rest are counted): a file with 500,000 unknown fields must not
#: make a 50 MB log line and /stats answer
MAX_ERRORS = 100
