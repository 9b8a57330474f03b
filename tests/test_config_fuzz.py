"""Fuzzing the configuration loader (hypothesis): YAML manifests (MeshConfig, Egress,
HTTPRouteGroup, UpstreamTrafficSetting, Service) and FSM's Pipy sidecar JSON, mutated from valid
documents (a subtree replaced by any value, a key dropped or added) and as raw bytes. Whatever the
file holds, `fastproxy.config.load` either returns a configuration or raises ConfigError (with the
file named), and a loaded configuration compiles into the decision table or fails with a
FastproxyError: nothing else may escape, since the sidecar's reload path catches only those.

Seeds: the repository's example configurations and the Pipy JSON of test_config_objects; the
committed corpus tests/fuzz/corpus/config/ (valid files, hostile ones, and every crash found so
far as a regression) is replayed file by file. CONFIG_FUZZ_EXAMPLES
sets the number of examples per property (default 100)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.config import load
from fastproxy.errors import ConfigError, FastproxyError
from fastproxy.policy import compile_policy
from fastproxy.tables import build_table
from test_config_objects import PIPY

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz" / "corpus" / "config"
EXAMPLES = int(os.environ.get("CONFIG_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_documents() -> List[Any]:
    """Parsed documents of the repository's example configurations and the Pipy JSON reference:
    the base of the structured mutations (the corpus's hostile files are replayed as they are)."""
    docs: List[Any] = [PIPY]
    for f in sorted((ROOT / "config").rglob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d is not None)
    return docs


SEEDS = seed_documents()


def check_load(data: bytes, suffix: str) -> None:
    """Writes data to a file, loads it (and compiles what loads): only project errors escape."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"fuzz{suffix}"
        f.write_bytes(data)
        try:
            cfg = load([str(f)], service_account="curl", namespace="curl")
        except ConfigError as e:
            assert str(e), "a ConfigError without a message"
            return
        try:
            build_table(compile_policy(cfg), resolver=lambda host, port: ["192.0.2.1"])
        except FastproxyError:
            pass


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=40),
                    st.sampled_from(["", "*", "0.0.0.0/0", "::/0", "10.0.0.0/33", "*.a.test", "-1",
                                     "65536", "tcp", "http", "https", "tcp-server-first",
                                     "1s", "10ms", "-1s", "1e999", "curl", "policy.flomesh.io/v1alpha1",
                                     "Egress", "MeshConfig", "a" * 300]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A seed document with 1-3 mutations at random paths."""
    doc = json.loads(json.dumps(draw(st.sampled_from(SEEDS)), default=str))
    for _ in range(draw(st.integers(1, 3))):
        node, parent, key = doc, None, None
        for _depth in range(draw(st.integers(0, 6))):
            if isinstance(node, dict) and node:
                k = draw(st.sampled_from(sorted(node, key=str)))
            elif isinstance(node, list) and node:
                k = draw(st.integers(0, len(node) - 1))
            else:
                break
            parent, key, node = node, k, node[k]
        op = draw(st.sampled_from(["replace", "drop", "add", "dup"]))
        if parent is None:
            if op == "replace":
                doc = draw(values)
            continue
        if op == "replace":
            parent[key] = draw(values)
        elif op == "drop" and isinstance(parent, dict):
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(values)
        elif op == "dup" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[key])))
    return doc


@FUZZ
@given(docs=st.lists(mutated(), min_size=1, max_size=3), as_json=st.booleans())
def test_mutated_documents_raise_only_config_errors(docs: List[Any], as_json: bool) -> None:
    if as_json and len(docs) == 1:
        data = json.dumps(docs[0]).encode()
        check_load(data, ".json")
    else:
        data = yaml.safe_dump_all(docs, sort_keys=False).encode()
        check_load(data, ".yaml")


yaml_tokens = st.sampled_from(["apiVersion: ", "kind: ", "spec:\n", "  ", "- ", ": ", "---\n", "\n",
                               "&a ", "*a", "!!python/object:os.system", "!!binary ", "<<: *a\n",
                               "{", "}", "[", "]", "'", '"', "#", "%YAML 1.1\n", "\t", "\x00", "\ufeff",
                               "? ", "|\n", ">-\n", "~", "0x1f", "1e400", ".nan"])


@FUZZ
@given(raw=st.one_of(st.binary(max_size=400),
                     st.lists(st.one_of(yaml_tokens, st.text(max_size=8)), max_size=60).map(
                         lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".yaml", ".json", ".yml"]))
def test_raw_bytes_raise_only_config_errors(raw: bytes, suffix: str) -> None:
    check_load(raw, suffix)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*")) or ["(empty)"])
def test_config_corpus(name: str) -> None:
    """Each committed input (seeds and past crashes) loads or fails with a ConfigError."""
    f = CORPUS / name
    assert f.is_file(), f"no corpus in {CORPUS}"
    check_load(f.read_bytes(), f.suffix or ".yaml")
