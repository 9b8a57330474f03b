"""fastproxy.iptables against real netfilter, in network namespaces of the tests' own (root).

- apply/remove: the nat table after each step, read back with iptables-save, compared line by
  line with the rendering (idempotence, changed lists, duplicates and fsm-init leftovers, remove
  twice, atomic failure);
- packets: an "app" namespace holding the rules, a recorder on the outbound/inbound ports that
  answers with each connection's SO_ORIGINAL_DST and a local service, joined by two veth pairs to
  an "ext" namespace holding the external hosts (192.0.2.0/24, 203.0.113.0/24, 2001:db8::/32).
  Clients run as UID 1000 (an application) and 1500 (the proxy).

Every namespace is created here and deleted here, whatever happens; the machine's own namespace is
never changed.
"""
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import fastproxy.iptables as fi
from fastproxy.errors import InterceptionError
from fastproxy.iptables import Interception, apply, remove, render

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("iptables-restore")),
                       reason="needs iproute2 and iptables"),
]

PEER = Path(__file__).with_name("iptables_peer.py")
PYTHON = "/usr/bin/python3"
SAVE = {4: "iptables-save", 6: "ip6tables-save"}
TOOL = {4: "iptables", 6: "ip6tables"}


def sh(*argv, check=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr}")
    return p


def suffix():
    return f"{os.getpid() % 10000:04d}{secrets.token_hex(2)}"


@contextlib.contextmanager
def namespaces(*tags):
    sfx = suffix()
    names = [f"fpi-{tag}-{sfx}" for tag in tags]
    made = []
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            made.append(n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
            # no duplicate address detection: addresses are usable at once
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
               "net.ipv6.conf.default.accept_dad=0", check=False)
        yield names, sfx
    finally:
        for n in made:
            sh("ip", "netns", "del", n, check=False)


def ipv6_usable(ns):
    return (Path("/proc/sys/net/ipv6").exists()
            and sh("ip", "netns", "exec", ns, "ip6tables", "-t", "nat", "-S", check=False)
            .returncode == 0)


def nat_state(ns, family):
    """{chain: [-A lines]} for every chain of the nat table, from iptables-save."""
    out = sh("ip", "netns", "exec", ns, SAVE[family], "-t", "nat").stdout
    state = {}
    for line in out.splitlines():
        if line.startswith(":"):
            state.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            state.setdefault(line.split()[1], []).append(line)
    return state


def expected_state(ic, family, base):
    """`base` (a nat_state) with render(ic, family) loaded on top."""
    state = {chain: list(rules) for chain, rules in base.items()}
    for line in render(ic, family).splitlines():
        if line.startswith(":"):
            state.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            state.setdefault(line.split()[1], []).append(line)
    return state


def family_list(ns):
    return (4, 6) if ipv6_usable(ns) else (4,)


# --- apply / remove, read back ----------------------------------------------------------------

CONFIG_A = Interception(outbound_ip_range_exclusion_list=["10.0.0.0/8", "2001:db8:a::/48"],
                        outbound_port_exclusion_list=list(range(2001, 2018)),
                        network_interface_exclusion_list=["eth7"])
CONFIG_B = Interception(inbound=True, inbound_port_exclusion_list=[8443],
                        outbound_ip_range_exclusion_list=["172.16.0.0/12", "2001:db8:b::/48"],
                        outbound_ip_range_inclusion_list=["192.0.2.0/24", "2001:db8::/32"],
                        outbound_port_exclusion_list=[25])

# What fsm-init loads (FSM's pkg/injector/iptables.go, default lists), for leftovers.
FSM_INIT_TEXT = """*nat
:FSM_PROXY_INBOUND - [0:0]
:FSM_PROXY_IN_REDIRECT - [0:0]
:FSM_PROXY_OUTBOUND - [0:0]
:FSM_PROXY_OUT_REDIRECT - [0:0]
-A FSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j FSM_PROXY_INBOUND
-A FSM_PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A FSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND
-A FSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""


@pytest.fixture
def ns():
    with namespaces("nat") as (names, _):
        yield names[0]


def test_apply_is_idempotent_and_remove_cleans_up(ns):
    families = family_list(ns)
    x = ("ip", "netns", "exec", ns)
    for f in families:  # somebody else's rule in OUTPUT must survive everything
        sh(*x, TOOL[f], "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-m", "udp", "--dport", "53",
           "-j", "RETURN")
    base = {f: nat_state(ns, f) for f in families}
    assert all("FSM_PROXY_OUTBOUND" not in base[f] for f in families)

    results = apply(CONFIG_A, families, netns=ns)
    assert [(r.family, r.done) for r in results] == [(f, True) for f in families]
    for f in families:
        assert nat_state(ns, f) == expected_state(CONFIG_A, f, base[f])
    # again: nothing doubles
    apply(CONFIG_A, families, netns=ns)
    for f in families:
        state = nat_state(ns, f)
        assert state == expected_state(CONFIG_A, f, base[f])
        assert state["OUTPUT"].count("-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND") == 1

    # other lists, inbound on: A's exclusions go, one PREROUTING jump
    apply(CONFIG_B, families, netns=ns)
    apply(CONFIG_B, families, netns=ns)
    for f in families:
        state = nat_state(ns, f)
        assert state == expected_state(CONFIG_B, f, base[f])
        text = "\n".join(sum(state.values(), []))
        assert "10.0.0.0/8" not in text and "2001:db8:a::/48" not in text and "eth7" not in text
        assert state["PREROUTING"] == ["-A PREROUTING -p tcp -j FSM_PROXY_INBOUND"]

    # extra copies of the jumps added behind our back are folded into one
    for f in families:
        for _ in range(2):
            sh(*x, TOOL[f], "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "FSM_PROXY_OUTBOUND")
            sh(*x, TOOL[f], "-t", "nat", "-I", "PREROUTING", "-p", "tcp", "-j",
               "FSM_PROXY_INBOUND")
        sh(*x, TOOL[f], "-t", "nat", "-A", "FSM_PROXY_OUT_REDIRECT", "-p", "tcp", "--dport",
           "15000", "-j", "ACCEPT")
    apply(CONFIG_B, families, netns=ns)
    for f in families:
        assert nat_state(ns, f) == expected_state(CONFIG_B, f, base[f])

    # back to outbound only: FSM_PROXY_INBOUND and its jump go
    apply(CONFIG_A, families, netns=ns)
    for f in families:
        state = nat_state(ns, f)
        assert state == expected_state(CONFIG_A, f, base[f])
        assert "FSM_PROXY_INBOUND" not in state and state["PREROUTING"] == []

    results = remove(families, netns=ns)
    assert [(r.family, r.done) for r in results] == [(f, True) for f in families]
    for f in families:
        assert nat_state(ns, f) == base[f]
    results = remove(families, netns=ns)  # nothing there: fine
    assert all(r.done and "no interception rules" in r.message for r in results)
    for f in families:
        assert nat_state(ns, f) == base[f]


def test_apply_over_fsm_init_leftovers_and_remove_them(ns):
    base = nat_state(ns, 4)
    sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=FSM_INIT_TEXT)
    sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=FSM_INIT_TEXT)
    assert nat_state(ns, 4)["OUTPUT"] == ["-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND"] * 2
    apply(Interception(), (4,), netns=ns)
    assert nat_state(ns, 4) == expected_state(Interception(), 4, base)
    sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=FSM_INIT_TEXT)
    remove((4,), netns=ns)
    assert nat_state(ns, 4) == base


def test_restore_failure_raises_with_stderr_and_changes_nothing(ns, monkeypatch):
    apply(CONFIG_A, (4,), netns=ns)
    before = nat_state(ns, 4)
    real_rules = fi._rules
    monkeypatch.setattr(fi, "_rules",
                        lambda ic, family: real_rules(ic, family) + ["-A OUTPUT -j FPI_NO_CHAIN"])
    with pytest.raises(InterceptionError) as info:
        apply(CONFIG_B, (4,), netns=ns)
    assert "iptables-restore" in str(info.value) and "FPI_NO_CHAIN" in str(info.value)
    assert nat_state(ns, 4) == before  # one transaction: all or nothing


def test_missing_namespace_is_an_error_for_ipv4_and_a_skip_for_ipv6():
    ghost = f"fpi-ghost-{suffix()}"
    with pytest.raises(InterceptionError) as info:
        apply(Interception(), (4, 6), netns=ghost)
    assert ghost in str(info.value)
    results = remove((6,), netns=ghost)
    assert len(results) == 1 and not results[0].done
    assert results[0].message.startswith("ipv6 skipped:") and ghost in results[0].message


def test_ipv6_tools_missing_skips_ipv6_only(ns, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(fi.shutil, "which",
                        lambda name, *a, **kw: None if name.startswith("ip6tables")
                        else real_which(name, *a, **kw))
    base6 = nat_state(ns, 6) if ipv6_usable(ns) else None
    results = apply(Interception(), netns=ns)
    assert [(r.family, r.done) for r in results] == [(4, True), (6, False)]
    assert "ip6tables" in results[1].message and "not found" in results[1].message
    assert "FSM_PROXY_OUTBOUND" in nat_state(ns, 4)
    if base6 is not None:
        assert nat_state(ns, 6) == base6
    assert [(r.family, r.done) for r in remove(netns=ns)] == [(4, True), (6, False)]


CLI_SCRIPT = """
import argparse, sys, types
config = types.ModuleType("fastproxy.config")  # stand-in: the chart defaults, no lists
names = ("outbound_ip_range_exclusion_list", "outbound_ip_range_inclusion_list",
         "outbound_port_exclusion_list", "inbound_port_exclusion_list",
         "network_interface_exclusion_list")
mesh = types.SimpleNamespace(**{name: [] for name in names})
config.default_config = lambda: types.SimpleNamespace(mesh=mesh)
sys.modules["fastproxy.config"] = config
from fastproxy.iptables import register
parser = argparse.ArgumentParser(prog="fastproxy")
register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_cli_apply_and_remove(ns):
    families = family_list(ns)
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=repo)
    base = {f: nat_state(ns, f) for f in families}
    run = ("ip", "netns", "exec", ns, sys.executable, "-c", CLI_SCRIPT, "iptables")
    p = sh(*run, "--apply", "--exclude-cidr", "192.0.2.0/24", "--exclude-port", "8080", env=env)
    assert "ipv4 interception rules applied" in p.stderr
    want = Interception(outbound_ip_range_exclusion_list=["192.0.2.0/24"],
                        outbound_port_exclusion_list=[8080])
    for f in families:
        assert nat_state(ns, f) == expected_state(want, f, base[f])
    p = sh(*run, "--remove", "--ipv4-only", env=env)
    assert "ipv4 interception rules removed" in p.stderr and "ipv6" not in p.stderr
    assert nat_state(ns, 4) == base[4]
    if 6 in families:
        assert nat_state(ns, 6) == expected_state(want, 6, base[6])
    p = sh(*run, "--apply", "--exclude-cidr", "nonsense", env=env, check=False)
    assert p.returncode == 1 and "outbound_ip_range_exclusion_list" in p.stderr


# --- real packets -----------------------------------------------------------------------------

ADDR = {
    4: dict(near="192.0.2.10", far="192.0.2.200", far_cidr="192.0.2.128/25",
            side="203.0.113.10", own="198.51.100.1", loop="127.0.0.1"),
    6: dict(near="2001:db8:1::10", far="2001:db8:1:8000::10", far_cidr="2001:db8:1:8000::/49",
            side="2001:db8:3::10", own="2001:db8:ff::1", loop="::1"),
}


def hp(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Pod:
    """The app namespace (rules, recorder, local service) and the ext namespace (hosts)."""

    def __init__(self, app, ext, sfx, families, peer):
        self.app, self.ext, self.families, self.peer = app, ext, families, peer
        self.side_if = f"fpic{sfx}"[:15]

    def connect(self, uid, targets):
        """Answers, one per target, of connections made by `uid` from the app namespace."""
        p = sh("ip", "netns", "exec", self.app, "setpriv", f"--reuid={uid}", f"--regid={uid}",
               "--clear-groups", PYTHON, self.peer, "connect", *targets)
        lines = p.stdout.splitlines()
        assert len(lines) == len(targets), p.stdout + p.stderr
        return dict(zip(targets, lines))


def _serve(ns, peer, specs):
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, peer, "serve", *specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"peer in {ns} did not start: {line} {proc.stderr.read()}")
    return proc


@pytest.fixture(scope="module")
def pod():
    peer_dir = tempfile.mkdtemp(prefix="fpi-peer-")
    os.chmod(peer_dir, 0o755)
    peer = shutil.copy(PEER, peer_dir)  # readable by UID 1000/1500 wherever the checkout lives
    os.chmod(peer, 0o644)
    procs = []
    try:
        with namespaces("app", "ext") as ((app, ext), sfx):
            try:
                ip_a, ip_e = ("ip", "-n", app), ("ip", "-n", ext)
                main_a, main_e = f"fpia{sfx}"[:15], f"fpib{sfx}"[:15]
                side_a, side_e = f"fpic{sfx}"[:15], f"fpid{sfx}"[:15]
                sh(*ip_a, "link", "add", main_a, "type", "veth", "peer", "name", main_e,
                   "netns", ext)
                sh(*ip_a, "link", "add", side_a, "type", "veth", "peer", "name", side_e,
                   "netns", ext)
                sh(*ip_a, "addr", "add", "198.51.100.1/28", "dev", main_a)
                sh(*ip_e, "addr", "add", "198.51.100.2/28", "dev", main_e)
                sh(*ip_a, "addr", "add", "198.51.100.17/28", "dev", side_a)
                sh(*ip_e, "addr", "add", "198.51.100.18/28", "dev", side_e)
                for host in ("192.0.2.10", "192.0.2.200", "203.0.113.10"):
                    sh(*ip_e, "addr", "add", f"{host}/32", "dev", "lo")
                families = family_list(app)
                if 6 in families:
                    sh(*ip_a, "addr", "add", "2001:db8:ff::1/64", "dev", main_a, "nodad")
                    sh(*ip_e, "addr", "add", "2001:db8:ff::2/64", "dev", main_e, "nodad")
                    sh(*ip_a, "addr", "add", "2001:db8:fe::1/64", "dev", side_a, "nodad")
                    sh(*ip_e, "addr", "add", "2001:db8:fe::2/64", "dev", side_e, "nodad")
                    for host in ("2001:db8:1::10", "2001:db8:1:8000::10", "2001:db8:3::10"):
                        sh(*ip_e, "addr", "add", f"{host}/128", "dev", "lo")
                for dev in (main_a, side_a):
                    sh(*ip_a, "link", "set", dev, "up")
                for dev in (main_e, side_e):
                    sh(*ip_e, "link", "set", dev, "up")
                # only the test ranges are routed, and no default route
                sh(*ip_a, "route", "add", "192.0.2.0/24", "via", "198.51.100.2")
                sh(*ip_a, "route", "add", "203.0.113.0/24", "via", "198.51.100.18")
                if 6 in families:
                    sh(*ip_a, "-6", "route", "add", "2001:db8:1::/48", "via", "2001:db8:ff::2")
                    sh(*ip_a, "-6", "route", "add", "2001:db8:3::/48", "via", "2001:db8:fe::2")
                ext_specs = ["ext@0.0.0.0:80", "ext@0.0.0.0:8080"]
                app_specs = ["recorder@0.0.0.0:15001", "inbound@0.0.0.0:15003",
                             "local@0.0.0.0:9000"]
                if 6 in families:
                    ext_specs += ["ext@[::]:80", "ext@[::]:8080"]
                    app_specs += ["recorder@[::]:15001", "inbound@[::]:15003", "local@[::]:9000"]
                procs.append(_serve(ext, peer, ext_specs))
                procs.append(_serve(app, peer, app_specs))
                yield Pod(app, ext, sfx, families, peer)
            finally:
                for proc in procs:  # before the namespaces go
                    proc.kill()
                    proc.wait(timeout=10)
    finally:
        shutil.rmtree(peer_dir, ignore_errors=True)


def redirected(f, addr, port):
    return f"recorder local={hp(ADDR[f]['loop'], 15001)} orig={hp(addr, port)}"


def is_direct(answer, addr, port):
    return answer.startswith(f"ext local={hp(addr, port)} ")


def targets(pod, *specs):
    """[(family, addr, port, "host:port")] for the named addresses of every family."""
    out = []
    for f in pod.families:
        for name, port in specs:
            addr = ADDR[f][name]
            out.append((f, addr, port, hp(addr, port)))
    return out


def test_default_rules_redirect_everything_but_the_proxy_and_loopback(pod):
    apply(Interception(), pod.families, netns=pod.app)
    app = targets(pod, ("near", 80), ("far", 80), ("near", 8080), ("side", 80), ("loop", 9000),
                  ("own", 9000))
    got = pod.connect(1000, [t[3] for t in app])
    for f, addr, port, t in app:
        if addr in (ADDR[f]["loop"], ADDR[f]["own"]):  # the app talking to itself: left alone
            assert got[t].startswith(f"local local={hp(addr, 9000)} "), (t, got[t])
        else:
            assert got[t] == redirected(f, addr, port), (t, got[t])

    proxy = targets(pod, ("near", 80), ("side", 80), ("loop", 9000), ("own", 9000))
    got = pod.connect(1500, [t[3] for t in proxy])
    for f, addr, port, t in proxy:
        if addr == ADDR[f]["loop"]:
            assert got[t].startswith(f"local local={hp(addr, 9000)} "), (t, got[t])
        elif addr == ADDR[f]["own"]:  # the proxy calling its own pod: the inbound listener
            assert got[t] == (f"inbound local={hp(ADDR[f]['loop'], 15003)} "
                              f"orig={hp(addr, 9000)}"), (t, got[t])
        else:  # the proxy's upstream connections are never redirected
            assert is_direct(got[t], addr, port), (t, got[t])


def test_excluded_cidr_port_and_interface_go_direct(pod):
    ic = Interception(outbound_ip_range_exclusion_list=[ADDR[4]["far_cidr"], ADDR[6]["far_cidr"]],
                      outbound_port_exclusion_list=[8080],
                      network_interface_exclusion_list=[pod.side_if])
    apply(ic, pod.families, netns=pod.app)
    app = targets(pod, ("near", 80), ("far", 80), ("near", 8080), ("side", 80))
    got = pod.connect(1000, [t[3] for t in app])
    for f, addr, port, t in app:
        if addr == ADDR[f]["near"] and port == 80:
            assert got[t] == redirected(f, addr, port), (t, got[t])
        else:
            assert is_direct(got[t], addr, port), (t, got[t])


def test_inclusion_list_redirects_only_included_ranges(pod):
    ic = Interception(outbound_ip_range_inclusion_list=[ADDR[4]["far_cidr"], ADDR[6]["far_cidr"]])
    apply(ic, pod.families, netns=pod.app)
    app = targets(pod, ("near", 80), ("far", 80), ("far", 8080), ("side", 80))
    got = pod.connect(1000, [t[3] for t in app])
    for f, addr, port, t in app:
        if addr == ADDR[f]["far"]:
            assert got[t] == redirected(f, addr, port), (t, got[t])
        else:
            assert is_direct(got[t], addr, port), (t, got[t])


def test_after_remove_nothing_is_redirected(pod):
    apply(Interception(inbound=True), pod.families, netns=pod.app)
    remove(pod.families, netns=pod.app)
    app = targets(pod, ("near", 80), ("side", 80))
    got = pod.connect(1000, [t[3] for t in app])
    for f, addr, port, t in app:
        assert is_direct(got[t], addr, port), (t, got[t])
    own = targets(pod, ("own", 9000))
    got = pod.connect(1500, [t[3] for t in own])
    for f, addr, port, t in own:
        assert got[t].startswith(f"local local={hp(addr, 9000)} "), (t, got[t])
