"""Unit tests of fastproxy.iptables: the rendered iptables-restore text, input validation, the
MeshConfig reading and the `fastproxy iptables` command line (no root needed)."""
import argparse
import sys
import types

import pytest

from fastproxy.errors import InterceptionError
from fastproxy.iptables import Interception, register, render

HEAD = """*nat
:FSM_PROXY_IN_REDIRECT - [0:0]
:FSM_PROXY_OUTBOUND - [0:0]
:FSM_PROXY_OUT_REDIRECT - [0:0]
-A FSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15003
-A FSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND
"""

V4_DEFAULT = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""

V6_DEFAULT = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d ::1/128 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d ::1/128 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""

EXCLUSIONS = dict(
    outbound_ip_range_exclusion_list=["1.1.1.1/32", "2001:db8:1::/48", "10.0.0.0/8"],
    outbound_port_exclusion_list=list(range(1001, 1018)),  # 17 ports: two multiport rules
    network_interface_exclusion_list=["eth0", "eth1"],
)

V4_EXCLUSIONS = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A FSM_PROXY_OUTBOUND -o eth0 -j RETURN
-A FSM_PROXY_OUTBOUND -o eth1 -j RETURN
-A FSM_PROXY_OUTBOUND -d 1.1.1.1/32 -j RETURN
-A FSM_PROXY_OUTBOUND -d 10.0.0.0/8 -j RETURN
-A FSM_PROXY_OUTBOUND -p tcp -m multiport --dports \
1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014,1015 -j RETURN
-A FSM_PROXY_OUTBOUND -p tcp -m multiport --dports 1016,1017 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""

V6_EXCLUSIONS = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d ::1/128 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d ::1/128 -j RETURN
-A FSM_PROXY_OUTBOUND -o eth0 -j RETURN
-A FSM_PROXY_OUTBOUND -o eth1 -j RETURN
-A FSM_PROXY_OUTBOUND -d 2001:db8:1::/48 -j RETURN
-A FSM_PROXY_OUTBOUND -p tcp -m multiport --dports \
1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014,1015 -j RETURN
-A FSM_PROXY_OUTBOUND -p tcp -m multiport --dports 1016,1017 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""

V4_INCLUSION = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A FSM_PROXY_OUTBOUND -d 192.0.2.0/25 -j RETURN
-A FSM_PROXY_OUTBOUND -d 192.0.2.0/24 -j FSM_PROXY_OUT_REDIRECT
-A FSM_PROXY_OUTBOUND -d 203.0.113.7/32 -j FSM_PROXY_OUT_REDIRECT
-A FSM_PROXY_OUTBOUND -j RETURN
COMMIT
"""

# an inclusion list without IPv6 ranges: no IPv6 destination is redirected
V6_INCLUSION = HEAD + """\
-A FSM_PROXY_OUTBOUND ! -d ::1/128 -o lo -m owner --uid-owner 1500 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN
-A FSM_PROXY_OUTBOUND -d ::1/128 -j RETURN
-A FSM_PROXY_OUTBOUND -j RETURN
COMMIT
"""

V4_INBOUND_CUSTOM = """*nat
:FSM_PROXY_INBOUND - [0:0]
:FSM_PROXY_IN_REDIRECT - [0:0]
:FSM_PROXY_OUTBOUND - [0:0]
:FSM_PROXY_OUT_REDIRECT - [0:0]
-A FSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16003
-A PREROUTING -p tcp -j FSM_PROXY_INBOUND
-A FSM_PROXY_INBOUND -i eth9 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m multiport --dports 30,40 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m tcp --dport 15010 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m tcp --dport 15901 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m tcp --dport 15902 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m tcp --dport 15903 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -m tcp --dport 15904 -j RETURN
-A FSM_PROXY_INBOUND -p tcp -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 16001
-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND
-A FSM_PROXY_OUTBOUND ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 2000 -j FSM_PROXY_IN_REDIRECT
-A FSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 2000 -j RETURN
-A FSM_PROXY_OUTBOUND -m owner --uid-owner 2000 -j RETURN
-A FSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A FSM_PROXY_OUTBOUND -o eth9 -j RETURN
-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT
COMMIT
"""


def test_render_default():
    assert render(Interception()) == V4_DEFAULT
    assert render(Interception(), 4) == V4_DEFAULT
    assert render(Interception(), 6) == V6_DEFAULT


def test_render_exclusions_split_by_family():
    ic = Interception(**EXCLUSIONS)
    assert render(ic, 4) == V4_EXCLUSIONS
    assert render(ic, 6) == V6_EXCLUSIONS


def test_render_inclusion_after_exclusions():
    ic = Interception(outbound_ip_range_exclusion_list=["192.0.2.0/25"],
                      outbound_ip_range_inclusion_list=["192.0.2.0/24", "203.0.113.7"])
    assert render(ic, 4) == V4_INCLUSION
    assert render(ic, 6) == V6_INCLUSION


def test_render_inbound_and_custom_ports():
    ic = Interception(proxy_uid=2000, outbound_port=16001, inbound_port=16003, inbound=True,
                      inbound_port_exclusion_list=[30, 40],
                      network_interface_exclusion_list=["eth9"])
    assert render(ic, 4) == V4_INBOUND_CUSTOM
    # without `inbound`, the inbound port exclusions have nothing to act on
    no_in = Interception(proxy_uid=2000, outbound_port=16001, inbound_port=16003,
                         inbound_port_exclusion_list=[30, 40])
    text = render(no_in, 4)
    assert "FSM_PROXY_INBOUND" not in text and "PREROUTING" not in text
    assert "30,40" not in text


def test_render_never_has_fsm_unreachable_accept_rule():
    for family in (4, 6):
        assert "ACCEPT" not in render(Interception(inbound=True, **EXCLUSIONS), family)


def test_only_tcp_enters_the_chains():
    ic = Interception(inbound=True, **EXCLUSIONS)
    for line in render(ic, 4).splitlines():
        if line.startswith(("-A OUTPUT", "-A PREROUTING")):
            assert " -p tcp " in line


def test_normalisation_and_dedup():
    ic = Interception(outbound_ip_range_exclusion_list=["10.1.2.3/8", "10.0.0.0/8", " 192.0.2.1 ",
                                                       "2001:DB8::1/32"],
                      outbound_port_exclusion_list=[80, "443", 80],
                      network_interface_exclusion_list=["eth0", "eth0", "veth+"])
    assert ic.outbound_ip_range_exclusion_list == ("10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32")
    assert ic.outbound_port_exclusion_list == (80, 443)
    assert ic.network_interface_exclusion_list == ("eth0", "veth+")


@pytest.mark.parametrize("field,value", [
    ("outbound_ip_range_exclusion_list", ["10.0.0.0/33"]),
    ("outbound_ip_range_exclusion_list", ["not-a-cidr"]),
    ("outbound_ip_range_exclusion_list", [167772160]),
    ("outbound_ip_range_inclusion_list", ["1.2.3.4/8", "fe80::/129"]),
    ("outbound_ip_range_inclusion_list", "10.0.0.0/8"),  # a string, not a list
    ("outbound_port_exclusion_list", [0]),
    ("outbound_port_exclusion_list", [65536]),
    ("outbound_port_exclusion_list", [True]),
    ("outbound_port_exclusion_list", ["80,443"]),
    ("inbound_port_exclusion_list", [-1]),
    ("network_interface_exclusion_list", ["this-name-is-too-long"]),
    ("network_interface_exclusion_list", ["eth0 -j ACCEPT"]),
    ("network_interface_exclusion_list", ["!eth0"]),
    ("network_interface_exclusion_list", ["a/b"]),
    ("network_interface_exclusion_list", [""]),
    ("proxy_uid", -1),
    ("proxy_uid", "1500"),
    ("outbound_port", 0),
    ("inbound_port", 70000),
    ("inbound", "yes"),
])
def test_validation_names_the_field(field, value):
    with pytest.raises(InterceptionError) as info:
        Interception(**{field: value})
    assert info.value.field.split("[")[0] == field
    assert field in str(info.value)


def test_validation_error_points_at_the_item():
    with pytest.raises(InterceptionError) as info:
        Interception(outbound_port_exclusion_list=[80, 443, 99999])
    assert info.value.field == "outbound_port_exclusion_list[2]"
    assert "99999" in info.value.message


def test_render_rejects_unknown_family():
    with pytest.raises(InterceptionError):
        render(Interception(), 5)


def mesh(**lists):
    base = {name: [] for name in ("outbound_ip_range_exclusion_list",
                                  "outbound_ip_range_inclusion_list",
                                  "outbound_port_exclusion_list",
                                  "inbound_port_exclusion_list",
                                  "network_interface_exclusion_list")}
    base.update(lists)
    return types.SimpleNamespace(**base)


def test_from_mesh_reads_lists_and_applies_overrides():
    m = mesh(outbound_ip_range_exclusion_list=["10.0.0.0/8"], outbound_port_exclusion_list=[25],
             inbound_port_exclusion_list=[9090], network_interface_exclusion_list=["eth1"],
             outbound_ip_range_inclusion_list=None)
    ic = Interception.from_mesh(m, proxy_uid=1600, inbound=True)
    assert ic == Interception(proxy_uid=1600, inbound=True,
                              outbound_ip_range_exclusion_list=["10.0.0.0/8"],
                              outbound_port_exclusion_list=[25], inbound_port_exclusion_list=[9090],
                              network_interface_exclusion_list=["eth1"])
    emptied = Interception.from_mesh(m, outbound_port_exclusion_list=[])
    assert emptied.outbound_port_exclusion_list == ()


def test_from_mesh_errors():
    with pytest.raises(InterceptionError) as info:
        Interception.from_mesh(types.SimpleNamespace(outbound_ip_range_exclusion_list=[]))
    assert info.value.field == "outbound_ip_range_inclusion_list"
    with pytest.raises(InterceptionError) as info:
        Interception.from_mesh(mesh(outbound_port_exclusion_list=["http"]))
    assert info.value.field == "outbound_port_exclusion_list[0]"
    with pytest.raises(TypeError):
        Interception.from_mesh(mesh(), no_such_field=1)


# --- the command line -------------------------------------------------------------------------

@pytest.fixture
def fake_config(monkeypatch):
    """A stand-in for fastproxy.config (load(paths).mesh / default_config().mesh) that records
    what it was asked for."""
    calls = []
    loaded = mesh(outbound_ip_range_exclusion_list=["10.0.0.0/8", "2001:db8:9::/48"],
                  outbound_port_exclusion_list=[25, 587],
                  network_interface_exclusion_list=["eth1"])
    module = types.ModuleType("fastproxy.config")

    def load(paths):
        calls.append(("load", list(paths)))
        return types.SimpleNamespace(mesh=loaded)

    def default_config():
        calls.append(("default",))
        return types.SimpleNamespace(mesh=mesh())

    module.load = load
    module.default_config = default_config
    monkeypatch.setitem(sys.modules, "fastproxy.config", module)
    import fastproxy
    monkeypatch.setattr(fastproxy, "config", module, raising=False)
    return calls


def cli(*argv):
    parser = argparse.ArgumentParser(prog="fastproxy")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["iptables", *argv])
    return args.func(args)


def test_cli_prints_both_families_from_default_config(fake_config, capsys):
    assert cli() == 0
    out = capsys.readouterr().out
    assert out == "# ipv4\n" + V4_DEFAULT + "# ipv6\n" + V6_DEFAULT
    assert fake_config == [("default",)]


def test_cli_merges_config_and_options(fake_config, capsys):
    rc = cli("--config", "/some/mesh.yaml", "--exclude-cidr", "10.0.0.0/8",
             "--exclude-cidr", "192.0.2.0/24", "--exclude-port", "587", "--exclude-port", "8080",
             "--exclude-interface", "eth2", "--include-cidr", "198.51.100.0/24",
             "--proxy-uid", "1700", "--outbound-port", "16001", "--ipv4-only")
    assert rc == 0
    assert fake_config == [("load", ["/some/mesh.yaml"])]
    want = Interception(proxy_uid=1700, outbound_port=16001,
                        outbound_ip_range_exclusion_list=["10.0.0.0/8", "2001:db8:9::/48",
                                                          "192.0.2.0/24"],
                        outbound_ip_range_inclusion_list=["198.51.100.0/24"],
                        outbound_port_exclusion_list=[25, 587, 8080],
                        network_interface_exclusion_list=["eth1", "eth2"])
    assert capsys.readouterr().out == "# ipv4\n" + render(want, 4)


def test_cli_inbound(fake_config, capsys):
    assert cli("--inbound", "--inbound-port", "16003") == 0
    out = capsys.readouterr().out
    assert out.count("-A PREROUTING -p tcp -j FSM_PROXY_INBOUND\n") == 2
    assert out.count("REDIRECT --to-ports 16003") == 2


def test_cli_bad_input_is_exit_1_with_the_field(fake_config, capsys):
    assert cli("--exclude-cidr", "300.1.1.1/8") == 1
    err = capsys.readouterr().err
    assert "outbound_ip_range_exclusion_list" in err and "300.1.1.1/8" in err


def test_cli_apply_and_remove_are_exclusive(fake_config):
    with pytest.raises(SystemExit):
        cli("--apply", "--remove")


def test_cli_with_the_real_default_config(capsys):
    pytest.importorskip("fastproxy.config")
    assert cli() == 0
    # FSM's chart defaults hold no lists: the rules are the plain default ones
    assert capsys.readouterr().out == "# ipv4\n" + V4_DEFAULT + "# ipv6\n" + V6_DEFAULT
