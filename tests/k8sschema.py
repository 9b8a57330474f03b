"""Offline Kubernetes schema checks for the k8s tests: every built-in object is validated with
`kubernetes-validate` (strict: unknown fields are errors) against the oldest and the newest
Kubernetes version the installed package ships; FSM's custom kinds (not in those schemas) are
loaded with fastproxy's own loader instead."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List

import pytest

kv = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as _kv_utils  # noqa: E402

VERSIONS = _kv_utils.all_versions()
OLDEST, NEWEST = VERSIONS[0], VERSIONS[-1]
#: native sidecars (an init container's restartPolicy) exist in the schema from 1.28 on
NATIVE_SIDECAR_MIN = "1.29.0"

BUILTIN_GROUPS = ("v1", "apps/v1", "batch/v1")


def is_builtin(obj: Dict[str, Any]) -> bool:
    return obj.get("apiVersion") in BUILTIN_GROUPS


def validate(obj: Dict[str, Any], version: str) -> None:
    """Raise AssertionError naming the object and the schema error."""
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:  # jsonschema's ValidationError
        path = ".".join(str(p) for p in getattr(e, "absolute_path", ()))
        raise AssertionError(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: "
                             f"Kubernetes {version}: {path}: {getattr(e, 'message', e)}") from None


def validate_all(objs: Iterable[Dict[str, Any]], versions: Iterable[str]) -> List[str]:
    """Validate every built-in object for every version; the kinds checked (for asserting that
    something was)."""
    kinds = []
    for obj in objs:
        if obj.get("kind") == "List":
            kinds += validate_all(obj.get("items") or [], list(versions))
            continue
        if not is_builtin(obj):
            continue
        for v in versions:
            validate(obj, v)
        kinds.append(obj["kind"])
    return kinds
