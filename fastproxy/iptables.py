"""Interception rules: the netfilter `nat` rules that send an application's outbound TCP to the
sidecar, laid out as FSM's `fsm-init` init container writes them (EGRESS.md section 1).

`render()` gives the `iptables-restore` text for one address family, `apply()` loads it
(idempotently) into the current network namespace or a named one, `remove()` takes every rule and
chain out again, and `register()` adds the `fastproxy iptables` subcommand.

Opt-in fail-closed rules (`FailClosed`, `render_fail_closed()`, `apply_fail_closed()`,
`remove_fail_closed()`) live in the `filter` table, chain FSM_PROXY_FAILCLOSED jumped to first in
OUTPUT: the app's non-TCP egress is dropped but DNS to the listed resolvers, loopback, replies
and the proxy UID's traffic.

Layout (all in the `nat` table, only TCP):

    OUTPUT     -p tcp -> FSM_PROXY_OUTBOUND
    PREROUTING -p tcp -> FSM_PROXY_INBOUND          (only with `inbound=True`)
    FSM_PROXY_OUTBOUND: lo rules, proxy UID, loopback address, excluded interfaces, excluded CIDRs,
                        excluded ports, then the inclusion CIDRs (rest RETURN) or a catch-all
    FSM_PROXY_OUT_REDIRECT: REDIRECT to the outbound port (15001)
    FSM_PROXY_IN_REDIRECT:  REDIRECT to the inbound port (15003)
    FSM_PROXY_INBOUND:      excluded interfaces and ports, FSM's fixed sidecar ports, then redirect

Where this differs from fsm-init, on purpose:
- rules are spelled as `iptables-save` prints them (`! -d X -o lo`, `-m multiport`,
  `--to-ports`), so the loaded state can be compared with the rendering line by line;
- FSM_PROXY_INBOUND is written in its final order with `-A` (fsm-init builds the same chain with
  `-I`, which only reverses the order of RETURN rules);
- port lists are split into rules of at most 15 ports (the `multiport` limit; fsm-init fails
  beyond it);
- FSM's `-A FSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT` is left out: it follows a
  REDIRECT, which is terminal, so no packet ever reaches it;
- IPv6 gets the same rules with `ip6tables` (fsm-init writes IPv4 only); each family takes the
  CIDRs of its own version. An inclusion list holding no CIDR of a family redirects nothing of
  that family (only the listed ranges are ever redirected).
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from fastproxy.errors import FastproxyError, InterceptionError

CHAIN_PREFIX = "FSM_PROXY_"
INBOUND = "FSM_PROXY_INBOUND"
IN_REDIRECT = "FSM_PROXY_IN_REDIRECT"
OUTBOUND = "FSM_PROXY_OUTBOUND"
OUT_REDIRECT = "FSM_PROXY_OUT_REDIRECT"

#: Ports FSM_PROXY_INBOUND never redirects: Pipy's Prometheus listener, the liveness, readiness
#: and startup probe ports and the health-check port (fixed in fsm-init).
INBOUND_FIXED_RETURN_PORTS = (15010, 15901, 15902, 15903, 15904)

#: The most ports one `-m multiport --dports` match takes.
MULTIPORT_MAX = 15

#: The MeshConfig attributes (fastproxy.config.MeshConfig) that feed the rules.
LIST_FIELDS = (
    "outbound_ip_range_exclusion_list",
    "outbound_ip_range_inclusion_list",
    "outbound_port_exclusion_list",
    "inbound_port_exclusion_list",
    "network_interface_exclusion_list",
)

FAMILIES = (4, 6)
_LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
# Linux interface names: 1..15 bytes, no '/', ':' or white space (dev_valid_name()). We also keep
# out what would change an iptables argument's meaning ('!', quotes, '#'); a trailing '+' is
# iptables' prefix wildcard.
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}\+?$")
_TOOL_TIMEOUT = 30.0


def _dedup(items: Iterable[Any]) -> Tuple[Any, ...]:
    """Order-preserving set: the first occurrence wins."""
    seen: dict = {}
    for item in items:
        seen.setdefault(item, None)
    return tuple(seen)


def _as_list(name: str, value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InterceptionError(f"must be a list, not {type(value).__name__}", field=name)
    return list(value)


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InterceptionError(f"{value!r} is not a port (1..65535)", field=name)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise InterceptionError(f"{value!r} is not a port (1..65535)", field=name)
    return value


def _cidr(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InterceptionError(f"{value!r} is not a CIDR", field=name)
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as e:
        raise InterceptionError(f"{value!r} is not a CIDR: {e}", field=name) from None
    return net.with_prefixlen


def _ifname(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.match(value) or value in (".", ".."):
        raise InterceptionError(f"{value!r} is not a network interface name", field=name)
    return value


@dataclass(frozen=True)
class Interception:
    """What to intercept. Construction validates and normalises every field: lists become
    de-duplicated tuples (first occurrence kept), CIDRs become `network/prefix` with host bits
    cleared (a bare address is a /32 or /128). Invalid input raises InterceptionError naming the
    field."""

    proxy_uid: int = 1500
    outbound_port: int = 15001
    inbound_port: int = 15003
    #: also write FSM_PROXY_INBOUND and the PREROUTING jump (inbound redirection to inbound_port)
    inbound: bool = False
    outbound_ip_range_exclusion_list: Sequence[str] = ()
    outbound_ip_range_inclusion_list: Sequence[str] = ()
    outbound_port_exclusion_list: Sequence[int] = ()
    inbound_port_exclusion_list: Sequence[int] = ()
    network_interface_exclusion_list: Sequence[str] = ()

    def __post_init__(self) -> None:
        uid = self.proxy_uid
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32 - 1:
            raise InterceptionError(f"{uid!r} is not a UID", field="proxy_uid")
        for name in ("outbound_port", "inbound_port"):
            _port(name, getattr(self, name))
        if not isinstance(self.inbound, bool):
            raise InterceptionError(f"{self.inbound!r} is not a boolean", field="inbound")
        checks = {
            "outbound_ip_range_exclusion_list": _cidr,
            "outbound_ip_range_inclusion_list": _cidr,
            "outbound_port_exclusion_list": _port,
            "inbound_port_exclusion_list": _port,
            "network_interface_exclusion_list": _ifname,
        }
        for name, check in checks.items():
            items = _as_list(name, getattr(self, name))
            normalised = _dedup(check(f"{name}[{i}]", v) for i, v in enumerate(items))
            object.__setattr__(self, name, normalised)

    @classmethod
    def from_mesh(cls, mesh: Any, **overrides: Any) -> "Interception":
        """The lists from a MeshConfig (`fastproxy.config.MeshConfig`), other fields from their
        defaults; `overrides` replaces any field, lists included."""
        values = {}
        for name in LIST_FIELDS:
            if not hasattr(mesh, name):
                raise InterceptionError(f"MeshConfig object has no attribute {name!r}",
                                        field=name)
            values[name] = getattr(mesh, name)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Interception has no field(s) {', '.join(unknown)}")
        values.update(overrides)
        return cls(**values)


def _version(cidr: str) -> int:
    return ipaddress.ip_network(cidr).version


def _port_chunks(ports: Sequence[int]) -> List[str]:
    return [",".join(str(p) for p in ports[i:i + MULTIPORT_MAX])
            for i in range(0, len(ports), MULTIPORT_MAX)]


def _check_family(family: int) -> int:
    if family not in FAMILIES:
        raise InterceptionError(f"address family must be 4 or 6, not {family!r}", field="family")
    return family


def _jumps(ic: Interception) -> List[Tuple[str, str]]:
    """(built-in chain, rule spec) of each jump into our chains, as iptables-save spells it."""
    out = [("OUTPUT", f"-p tcp -j {OUTBOUND}")]
    if ic.inbound:
        out.insert(0, ("PREROUTING", f"-p tcp -j {INBOUND}"))
    return out


def _chains(ic: Interception) -> List[str]:
    return ([INBOUND] if ic.inbound else []) + [IN_REDIRECT, OUTBOUND, OUT_REDIRECT]


def _rules(ic: Interception, family: int) -> List[str]:
    """Every `-A` line, in fsm-init's order (jump lines included)."""
    uid = ic.proxy_uid
    lo = _LOOPBACK[family]
    ifaces = ic.network_interface_exclusion_list
    r = [f"-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {ic.inbound_port}"]
    if ic.inbound:
        r.append(f"-A PREROUTING -p tcp -j {INBOUND}")
        r += [f"-A {INBOUND} -i {i} -j RETURN" for i in ifaces]
        r += [f"-A {INBOUND} -p tcp -m multiport --dports {c} -j RETURN"
              for c in _port_chunks(ic.inbound_port_exclusion_list)]
        r += [f"-A {INBOUND} -p tcp -m tcp --dport {p} -j RETURN"
              for p in INBOUND_FIXED_RETURN_PORTS]
        r.append(f"-A {INBOUND} -p tcp -j {IN_REDIRECT}")
    # fsm-init also appends `-A FSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT` here. It
    # can never match: the REDIRECT before it is terminal for every TCP packet. Left out.
    r.append(f"-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {ic.outbound_port}")
    r.append(f"-A OUTPUT -p tcp -j {OUTBOUND}")
    # 1. loopback: the proxy calling its own pod address goes to the inbound listener; an app
    #    talking to itself over lo is left alone
    r.append(f"-A {OUTBOUND} ! -d {lo} -o lo -m owner --uid-owner {uid} -j {IN_REDIRECT}")
    r.append(f"-A {OUTBOUND} -o lo -m owner ! --uid-owner {uid} -j RETURN")
    # 2. the proxy's own upstream connections (no loop); 3. the loopback address
    r.append(f"-A {OUTBOUND} -m owner --uid-owner {uid} -j RETURN")
    r.append(f"-A {OUTBOUND} -d {lo} -j RETURN")
    # 4. exclusions: interfaces, CIDRs of this family, ports
    r += [f"-A {OUTBOUND} -o {i} -j RETURN" for i in ifaces]
    r += [f"-A {OUTBOUND} -d {c} -j RETURN"
          for c in ic.outbound_ip_range_exclusion_list if _version(c) == family]
    r += [f"-A {OUTBOUND} -p tcp -m multiport --dports {c} -j RETURN"
          for c in _port_chunks(ic.outbound_port_exclusion_list)]
    # 5. inclusion list: only those CIDRs; else everything
    if ic.outbound_ip_range_inclusion_list:
        r += [f"-A {OUTBOUND} -d {c} -j {OUT_REDIRECT}"
              for c in ic.outbound_ip_range_inclusion_list if _version(c) == family]
        r.append(f"-A {OUTBOUND} -j RETURN")
    else:
        r.append(f"-A {OUTBOUND} -j {OUT_REDIRECT}")
    return r


def render(ic: Interception, family: int = 4) -> str:
    """The `iptables-restore` (family 4) or `ip6tables-restore` (family 6) input, ending in a
    newline. Declaring the chains flushes them when loaded with --noflush; the jump lines from
    OUTPUT/PREROUTING would be added again on every load, which is why apply() does not use this
    text as is."""
    _check_family(family)
    lines = ["*nat"] + [f":{c} - [0:0]" for c in _chains(ic)] + _rules(ic, family) + ["COMMIT"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Loading and removing


@dataclass(frozen=True)
class FamilyResult:
    """What apply()/remove() did for one address family."""

    family: int
    done: bool
    message: str


class _Unavailable(Exception):
    """This family's tools cannot be used here (reason in args[0])."""


class _Tables:
    """One family's iptables tools, run in the current network namespace or in `netns`."""

    def __init__(self, family: int, netns: Optional[str], table: str = "nat") -> None:
        self.family = family
        self.table = table
        self.name = "iptables" if family == 4 else "ip6tables"
        self.restore_name = f"{self.name}-restore"
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.where = f" in network namespace {netns}" if netns else ""

    def _find(self, tool: str) -> str:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if path is None:
            raise _Unavailable(f"{tool} not found")
        return path

    def _run(self, argv: List[str], stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.prefix + argv, input=stdin, capture_output=True, text=True,
                                  timeout=_TOOL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InterceptionError(f"{argv[0]}{self.where}: {e}", obj=self.name) from None

    def listing(self) -> List[str]:
        """`-t TABLE -S`: the table as rule specs. Raises _Unavailable if it cannot be read."""
        self._find(self.restore_name)
        p = self._run([self._find(self.name), "-t", self.table, "-S"])
        if p.returncode != 0:
            raise _Unavailable(f"`{self.name} -t {self.table} -S`{self.where} failed: "
                               f"{p.stderr.strip() or p.returncode}")
        return p.stdout.splitlines()

    def has_rule(self, chain: str, spec: str) -> bool:
        """`-t TABLE -C chain spec`. Exit 0: present; 1: no such rule; 2: a chain it names is
        missing. Anything else raises."""
        p = self._run([self._find(self.name), "-t", self.table, "-C", chain] + shlex.split(spec))
        if p.returncode in (0, 1, 2):
            return p.returncode == 0
        raise InterceptionError(f"`{self.name} -t {self.table} -C {chain} {spec}`{self.where} exited with "
                                f"{p.returncode}: {p.stderr.strip()}", obj=self.name)

    def restore(self, text: str) -> None:
        p = self._run([self._find(self.restore_name), "--noflush"], stdin=text)
        if p.returncode != 0:
            raise InterceptionError(f"{self.restore_name} --noflush{self.where} exited with "
                                    f"{p.returncode}: {p.stderr.strip()}", obj=self.name)


def _target(spec_tokens: List[str]) -> Optional[str]:
    for i, tok in enumerate(spec_tokens[:-1]):
        if tok in ("-j", "--jump", "-g", "--goto"):
            return spec_tokens[i + 1]
    return None


def _foreign_jumps(listing: List[str]) -> List[str]:
    """The `-A` lines of chains other than ours whose target is one of our chains."""
    out = []
    for line in listing:
        if not line.startswith("-A "):
            continue
        tokens = shlex.split(line)
        if tokens[1].startswith(CHAIN_PREFIX):
            continue
        target = _target(tokens)
        if target is not None and target.startswith(CHAIN_PREFIX):
            out.append(line)
    return out


def _our_chains(listing: List[str]) -> List[str]:
    return [ln.split()[1] for ln in listing
            if ln.startswith("-N ") and ln.split()[1].startswith(CHAIN_PREFIX)]


def _apply_text(ic: Interception, family: int, tables: _Tables) -> str:
    """The restore transaction that brings the nat table from its current state to exactly
    render(ic, family): our chains are declared (so flushed) and refilled; of the jumps into them
    from other chains, one copy of each wanted jump is kept and every other one is deleted; a
    wanted jump is added only where no copy is kept; FSM_PROXY_INBOUND goes when inbound is off."""
    listing = tables.listing()
    wanted = {f"-A {chain} {spec}" for chain, spec in _jumps(ic)}
    kept, deletes = set(), []
    for line in _foreign_jumps(listing):
        if line in wanted and line not in kept:
            kept.add(line)
        else:
            deletes.append("-D" + line[2:])
    drop_chains = [c for c in _our_chains(listing) if c not in _chains(ic)]
    body = [ln for ln in _rules(ic, family) if ln not in kept]
    lines = (["*nat"] + [f":{c} - [0:0]" for c in _chains(ic)] + deletes
             + [f"-F {c}" for c in drop_chains] + [f"-X {c}" for c in drop_chains]
             + body + ["COMMIT"])
    return "\n".join(lines) + "\n"


def _families(families: Iterable[int]) -> Tuple[int, ...]:
    fams = _dedup(families)
    for f in fams:
        _check_family(f)
    return fams


def _skip_or_raise(family: int, reason: str) -> FamilyResult:
    if family == 6:
        return FamilyResult(6, False, f"ipv6 skipped: {reason}")
    raise InterceptionError(reason, obj="iptables")


def _listings(families: Iterable[int], netns: Optional[str], table: str,
              results: List[FamilyResult]) -> Iterator[Tuple[int, "_Tables", List[str]]]:
    """(family, its tables, the table's rule listing) for each family that can be used here; a
    family that cannot is recorded in `results` as skipped (IPv6) or raises (IPv4)."""
    for family in _families(families):
        tables = _Tables(family, netns, table)
        try:
            listing = tables.listing()
        except _Unavailable as e:
            results.append(_skip_or_raise(family, str(e)))
            continue
        yield family, tables, listing


def apply(ic: Interception, families: Iterable[int] = FAMILIES, *,
          netns: Optional[str] = None) -> List[FamilyResult]:
    """Load the rules with `iptables-restore --noflush` (and `ip6tables-restore`), in the current
    network namespace or in the named one (`ip netns exec`). Idempotent: whatever was there
    before, afterwards our chains hold exactly render(ic, family) and OUTPUT (PREROUTING) holds
    one jump into them. Each family is one restore transaction. If IPv6 cannot be used here it is
    skipped (see the result's message); tool failures raise InterceptionError with their
    stderr."""
    results = []
    for family in _families(families):
        tables = _Tables(family, netns)
        try:
            text = _apply_text(ic, family, tables)
        except _Unavailable as e:
            results.append(_skip_or_raise(family, str(e)))
            continue
        tables.restore(text)
        missing = [f"{chain} {spec}" for chain, spec in _jumps(ic)
                   if not tables.has_rule(chain, spec)]
        if missing:
            raise InterceptionError(f"after {tables.restore_name}, `-C` does not find: "
                                    f"{'; '.join(missing)}", obj=tables.name)
        results.append(FamilyResult(family, True, f"ipv{family} interception rules applied"))
    return results


def remove(families: Iterable[int] = FAMILIES, *,
           netns: Optional[str] = None) -> List[FamilyResult]:
    """Delete every jump into an FSM_PROXY_* chain and every FSM_PROXY_* chain of the nat table
    (ours or fsm-init's), in one restore transaction per family. Nothing there: nothing done,
    success. IPv6 unusable here: skipped, as in apply()."""
    results: List[FamilyResult] = []
    for family, tables, listing in _listings(families, netns, "nat", results):
        chains = _our_chains(listing)
        deletes = ["-D" + line[2:] for line in _foreign_jumps(listing)]
        if not chains and not deletes:
            results.append(FamilyResult(family, True, f"ipv{family}: no interception rules"))
            continue
        lines = (["*nat"] + deletes + [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
                 + ["COMMIT"])
        tables.restore("\n".join(lines) + "\n")
        results.append(FamilyResult(family, True, f"ipv{family} interception rules removed"))
    return results


# ---------------------------------------------------------------------------------------------
# Fail-closed: the app's non-TCP egress dropped (filter table)

FAILCLOSED = "FSM_PROXY_FAILCLOSED"
#: MeshConfig (or pod) annotations that turn fail-closed on and configure it.
ANNOTATION_FAIL_CLOSED = "fastproxy.flomesh.io/fail-closed"
ANNOTATION_DNS_SERVERS = "fastproxy.flomesh.io/dns-servers"
ANNOTATION_ICMP_ECHO = "fastproxy.flomesh.io/icmp-echo-allow"
#: ICMPv6 the kernel needs for IPv6 to work at all: router solicitation, neighbour solicitation
#: and advertisement, MLDv2 reports.
_ICMP6_NEEDED = (133, 135, 136, 143)
DNS_PORT = 53


def _ip(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InterceptionError(f"{value!r} is not an IP address", field=name)
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InterceptionError(f"{value!r} is not an IP address", field=name) from None


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> List[str]:
    """The `nameserver` addresses of a resolv.conf (zone suffixes such as %eth0 dropped); an
    unreadable file gives none."""
    out: List[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(str(ipaddress.ip_address(parts[1].split("%", 1)[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return list(_dedup(out))


@dataclass(frozen=True)
class FailClosed:
    """The fail-closed filter rules: from the app (every UID but the proxy's), only TCP (which
    the nat rules send to the sidecar), DNS over UDP to `dns_servers`, ICMP echo to the
    `icmp_echo_allow` CIDRs, replies of flows the app did not start (conntrack ESTABLISHED,
    RELATED: ICMP errors, answers of a UDP server in the pod), the ICMPv6 that neighbour
    discovery needs, and loopback leave the pod; everything else (UDP and so QUIC, ICMP, SCTP,
    raw IP) is dropped."""

    proxy_uid: int = 1500
    dns_servers: Sequence[str] = ()
    icmp_echo_allow: Sequence[str] = ()

    def __post_init__(self) -> None:
        uid = self.proxy_uid
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32 - 1:
            raise InterceptionError(f"{uid!r} is not a UID", field="proxy_uid")
        dns = _as_list("dns_servers", self.dns_servers)
        object.__setattr__(self, "dns_servers",
                           _dedup(_ip(f"dns_servers[{i}]", v) for i, v in enumerate(dns)))
        icmp = _as_list("icmp_echo_allow", self.icmp_echo_allow)
        object.__setattr__(self, "icmp_echo_allow",
                           _dedup(_cidr(f"icmp_echo_allow[{i}]", v) for i, v in enumerate(icmp)))


def fail_closed_from_annotations(annotations: Any, where: str = "metadata.annotations"
                                 ) -> Tuple[Optional[Dict[str, Any]], List[Tuple[str, str]]]:
    """Read the fail-closed annotations of a MeshConfig or pod: ({"enabled", "dns_servers",
    "icmp_echo_allow"} or None when the fail-closed annotation is absent, [(field path,
    message)] of every invalid one)."""
    errors: List[Tuple[str, str]] = []
    if not isinstance(annotations, dict):
        return None, errors
    present = [k for k in (ANNOTATION_FAIL_CLOSED, ANNOTATION_DNS_SERVERS, ANNOTATION_ICMP_ECHO)
               if k in annotations]
    if not present:
        return None, errors
    out: Dict[str, Any] = {"enabled": False, "dns_servers": [], "icmp_echo_allow": []}
    for key in present:
        path = f'{where}["{key}"]'
        v = annotations[key]
        if not isinstance(v, str):
            errors.append((path, f"must be a string, not {type(v).__name__}"))
            continue
        if key == ANNOTATION_FAIL_CLOSED:
            if v.strip().lower() not in ("true", "false"):
                errors.append((path, f'must be "true" or "false", not {v!r}'))
            out["enabled"] = v.strip().lower() == "true"
            continue
        items = [x.strip() for x in v.replace(",", " ").split() if x.strip()]
        check = _ip if key == ANNOTATION_DNS_SERVERS else _cidr
        for i, item in enumerate(items):
            try:
                out["dns_servers" if key == ANNOTATION_DNS_SERVERS else "icmp_echo_allow"].append(
                    check(f"{path}[{i}]", item))
            except InterceptionError as e:
                errors.append((path, e.message))
    if ANNOTATION_FAIL_CLOSED not in annotations:
        errors.append((f'{where}["{present[0]}"]',
                       f'is set but {ANNOTATION_FAIL_CLOSED} is not; set it to "true" or "false"'))
    return out, errors


def _fc_rules(fc: FailClosed, family: int) -> List[str]:
    c = FAILCLOSED
    r = [f"-A {c} -o lo -j RETURN",
         f"-A {c} -m owner --uid-owner {fc.proxy_uid} -j RETURN",
         f"-A {c} -p tcp -j RETURN",
         f"-A {c} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    bits = 32 if family == 4 else 128
    r += [f"-A {c} -d {ip}/{bits} -p udp -m udp --dport {DNS_PORT} -j RETURN"
          for ip in fc.dns_servers if ipaddress.ip_address(ip).version == family]
    if family == 4:
        r += [f"-A {c} -d {net} -p icmp -m icmp --icmp-type 8 -j RETURN"
              for net in fc.icmp_echo_allow if _version(net) == 4]
    else:
        r += [f"-A {c} -d {net} -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j RETURN"
              for net in fc.icmp_echo_allow if _version(net) == 6]
        r += [f"-A {c} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in _ICMP6_NEEDED]
    r.append(f"-A {c} -j DROP")
    return r


_FC_JUMP = f"-A OUTPUT -j {FAILCLOSED}"


def render_fail_closed(fc: FailClosed, family: int = 4) -> str:
    """The `iptables-restore` text of the fail-closed filter rules for one family (the jump is
    inserted first in OUTPUT, so no other rule there can let the app's datagrams out)."""
    _check_family(family)
    lines = (["*filter", f":{FAILCLOSED} - [0:0]", f"-I OUTPUT 1 -j {FAILCLOSED}"]
             + _fc_rules(fc, family) + ["COMMIT"])
    return "\n".join(lines) + "\n"


def apply_fail_closed(fc: FailClosed, families: Iterable[int] = FAMILIES, *,
                      netns: Optional[str] = None) -> List[FamilyResult]:
    """Load the fail-closed rules (filter table) in one restore transaction per family.
    Idempotent: afterwards FSM_PROXY_FAILCLOSED holds exactly the rules and OUTPUT holds one
    jump to it, first."""
    results: List[FamilyResult] = []
    for family, tables, listing in _listings(families, netns, "filter", results):
        jumps = [ln for ln in _foreign_jumps(listing) if shlex.split(ln)[-1] == FAILCLOSED]
        first_output = next((ln for ln in listing if ln.startswith("-A OUTPUT ")), None)
        keep = first_output == _FC_JUMP
        deletes = ["-D" + ln[2:] for ln in jumps]
        if keep:
            deletes.remove("-D" + _FC_JUMP[2:])
        lines = (["*filter", f":{FAILCLOSED} - [0:0]"] + deletes
                 + ([] if keep else [f"-I OUTPUT 1 -j {FAILCLOSED}"])
                 + _fc_rules(fc, family) + ["COMMIT"])
        tables.restore("\n".join(lines) + "\n")
        if not tables.has_rule("OUTPUT", f"-j {FAILCLOSED}"):
            raise InterceptionError(f"after {tables.restore_name}, the OUTPUT jump to "
                                    f"{FAILCLOSED} is missing", obj=tables.name)
        results.append(FamilyResult(family, True, f"ipv{family} fail-closed rules applied"))
    return results


def remove_fail_closed(families: Iterable[int] = FAMILIES, *,
                       netns: Optional[str] = None) -> List[FamilyResult]:
    """Take FSM_PROXY_FAILCLOSED and every jump to it out of the filter table."""
    results: List[FamilyResult] = []
    for family, tables, listing in _listings(families, netns, "filter", results):
        jumps = [ln for ln in _foreign_jumps(listing) if shlex.split(ln)[-1] == FAILCLOSED]
        chains = [c for c in _our_chains(listing) if c == FAILCLOSED]
        if not jumps and not chains:
            results.append(FamilyResult(family, True, f"ipv{family}: no fail-closed rules"))
            continue
        lines = (["*filter"] + ["-D" + ln[2:] for ln in jumps] + [f"-F {c}" for c in chains]
                 + [f"-X {c}" for c in chains] + ["COMMIT"])
        tables.restore("\n".join(lines) + "\n")
        results.append(FamilyResult(family, True, f"ipv{family} fail-closed rules removed"))
    return results


# ---------------------------------------------------------------------------------------------
# `fastproxy iptables`


def register(subparsers: Any) -> None:
    """Add `fastproxy iptables` to an argparse subparsers object; its func returns an exit code."""
    p = subparsers.add_parser(
        "iptables", help="print, apply or remove the interception rules",
        description="Print the nat-table interception rules (FSM fsm-init layout) for IPv4 and "
                    "IPv6, or load them (--apply) / take them out (--remove) in this network "
                    "namespace. Lists from the MeshConfig and from the command line are merged.")
    p.add_argument("--config", metavar="PATH",
                   help="config file or directory holding the MeshConfig "
                        "(default: the embedded default MeshConfig)")
    p.add_argument("--proxy-uid", type=int, metavar="UID", help="the sidecar's UID (1500)")
    p.add_argument("--outbound-port", type=int, metavar="PORT", help="outbound listener (15001)")
    p.add_argument("--inbound", action="store_true",
                   help="also redirect inbound TCP (PREROUTING) to the inbound port")
    p.add_argument("--inbound-port", type=int, metavar="PORT", help="inbound listener (15003)")
    p.add_argument("--exclude-cidr", action="append", default=[], metavar="CIDR",
                   help="never redirect this destination range (repeatable)")
    p.add_argument("--exclude-port", action="append", default=[], type=int, metavar="PORT",
                   help="never redirect this destination port (repeatable)")
    p.add_argument("--include-cidr", action="append", default=[], metavar="CIDR",
                   help="redirect only these destination ranges (repeatable)")
    p.add_argument("--exclude-interface", action="append", default=[], metavar="IF",
                   help="never redirect traffic leaving (or, inbound, entering) by IF (repeatable)")
    p.add_argument("--ipv4-only", action="store_true", help="leave IPv6 alone")
    p.add_argument("--fail-closed", action="store_true",
                   help="also drop the app's non-TCP egress (UDP/QUIC, ICMP, ...) in the filter "
                        f"table (chain {FAILCLOSED}), except DNS to the resolvers, loopback and the "
                        "proxy UID; also on with the MeshConfig annotation "
                        f"{ANNOTATION_FAIL_CLOSED}: \"true\"")
    p.add_argument("--dns-server", action="append", default=[], metavar="IP",
                   help="fail-closed: a resolver the app may query on UDP port 53 (repeatable; "
                        "default: the MeshConfig annotation, else the nameservers of "
                        "/etc/resolv.conf)")
    p.add_argument("--allow-icmp-echo", action="append", default=[], metavar="CIDR",
                   help="fail-closed: ping (ICMP echo) allowed to this range (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true",
                      help="load the rules (iptables-restore --noflush; idempotent); without "
                           "fail-closed, an earlier fail-closed chain is taken out")
    mode.add_argument("--remove", action="store_true",
                      help="delete every FSM_PROXY_* chain and the jumps into them (with "
                           "--fail-closed: only the fail-closed chain)")
    p.set_defaults(func=run)


def _load_mesh(path: Optional[str]) -> Any:
    import fastproxy.config as config  # lazily: only the CLI needs the config loader

    return (config.load([path]) if path else config.default_config()).mesh


def interception_from_args(args: argparse.Namespace, mesh: Any) -> Interception:
    """The Interception for the command line: MeshConfig lists united with the options' lists."""
    cli_lists = {
        "outbound_ip_range_exclusion_list": args.exclude_cidr,
        "outbound_ip_range_inclusion_list": args.include_cidr,
        "outbound_port_exclusion_list": args.exclude_port,
        "network_interface_exclusion_list": args.exclude_interface,
    }
    overrides: dict = {}
    for name, extra in cli_lists.items():
        if extra:
            overrides[name] = _as_list(name, getattr(mesh, name, None)) + list(extra)
    for name in ("proxy_uid", "outbound_port", "inbound_port"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides["inbound"] = bool(args.inbound)
    return Interception.from_mesh(mesh, **overrides)


def fail_closed_from_args(args: argparse.Namespace, mesh: Any) -> Optional[FailClosed]:
    """The FailClosed rules the command line and the MeshConfig's annotations ask for, or None
    when fail-closed is off. Resolvers: --dns-server, else the annotation, else resolv.conf."""
    notes = getattr(mesh, "fail_closed", None) or {}
    if not (args.fail_closed or notes.get("enabled")):
        return None
    dns = list(args.dns_server) or list(notes.get("dns_servers") or []) or resolv_conf_nameservers()
    icmp = list(notes.get("icmp_echo_allow") or []) + list(args.allow_icmp_echo)
    uid = args.proxy_uid if args.proxy_uid is not None else 1500
    return FailClosed(proxy_uid=uid, dns_servers=dns, icmp_echo_allow=icmp)


def _report(results: List[FamilyResult]) -> None:
    for r in results:
        print(f"fastproxy iptables: {r.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """`fastproxy iptables`: 0 on success, 1 on a configuration or interception error."""
    families = (4,) if args.ipv4_only else FAMILIES
    try:
        if args.remove:
            if not args.fail_closed:
                _report(remove(families))
            _report(remove_fail_closed(families))
            return 0
        mesh = _load_mesh(args.config)
        ic = interception_from_args(args, mesh)
        fc = fail_closed_from_args(args, mesh)
        if args.apply:
            _report(apply(ic, families))
            if fc is not None:
                _report(apply_fail_closed(fc, families))
            else:
                _report([r for r in remove_fail_closed(families) if "removed" in r.message])
            return 0
        out = []
        for family in families:
            out.append(f"# ipv{family}\n{render(ic, family)}")
            if fc is not None:
                out.append(f"# ipv{family} fail-closed\n{render_fail_closed(fc, family)}")
        sys.stdout.write("".join(out))
        return 0
    except FastproxyError as e:
        print(f"fastproxy iptables: {e}", file=sys.stderr)
        return 1
