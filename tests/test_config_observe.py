"""MeshConfig settings of the access log and audit mode (fastproxy's own fields next to FSM's):
`spec.observability.fastproxyAccessLog` and `spec.traffic.fastproxyEgressAuditMode`, their
defaults, and errors that name the file, the object and the field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fastproxy.accesslog import AccessLogSettings
from fastproxy.config import default_config, load
from fastproxy.errors import ConfigErrors


def mesh(tmp_path: Path, spec: dict) -> str:
    p = tmp_path / "mesh.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
                                 "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"},
                                 "spec": spec}))
    return str(p)


def test_defaults_log_everything_and_enforce() -> None:
    m = default_config().mesh
    assert m.egress_audit_mode is False
    assert (m.access_log_enabled, m.access_log_passthrough) == (True, "all")


def test_settings_are_read(tmp_path: Path) -> None:
    m = load([mesh(tmp_path, {"traffic": {"fastproxyEgressAuditMode": True},
                              "observability": {"fastproxyAccessLog": {
                                  "passthrough": "sample", "sampleRate": 0.25}}})]).mesh
    assert m.egress_audit_mode is True
    s = AccessLogSettings(m.access_log_enabled, m.access_log_passthrough, m.access_log_sample_rate)
    assert s.passthrough_share() == 0.25
    assert AccessLogSettings(True, "none").passthrough_share() == 0.0
    d = load([mesh(tmp_path, {"observability": {"fastproxyAccessLog": {"enabled": False}}})])
    assert d.mesh.access_log_enabled is False
    assert d.mesh.to_dict()["spec"]["observability"]["fastproxyAccessLog"]["enabled"] is False


@pytest.mark.parametrize("spec, field, fragment", [
    ({"traffic": {"fastproxyEgressAuditMode": "maybe"}}, "spec.traffic.fastproxyEgressAuditMode",
     "bool"),
    ({"observability": {"fastproxyAccessLog": {"passthrough": "some"}}},
     "spec.observability.fastproxyAccessLog.passthrough", "all"),
    ({"observability": {"fastproxyAccessLog": {"sampleRate": 2}}},
     "spec.observability.fastproxyAccessLog.sampleRate", "0 to 1"),
    ({"observability": {"fastproxyAccessLog": {"sampleRate": "half"}}},
     "spec.observability.fastproxyAccessLog.sampleRate", "0 to 1"),
    ({"observability": {"fastproxyAccessLog": {"passthru": "all"}}},
     "spec.observability.fastproxyAccessLog.passthru", ""),
    ({"observability": {"fastproxyAccessLog": ["all"]}},
     "spec.observability.fastproxyAccessLog", "mapping"),
])
def test_bad_values_name_file_object_field(tmp_path: Path, spec: dict, field: str,
                                           fragment: str) -> None:
    with pytest.raises(ConfigErrors) as ei:
        load([mesh(tmp_path, spec)])
    (e,) = ei.value.errors
    assert e.field == field, str(e)
    assert fragment in e.message, str(e)
    assert str(e).startswith(f"{tmp_path}/mesh.yaml: MeshConfig fsm-system/fsm-mesh-config: "), str(e)
