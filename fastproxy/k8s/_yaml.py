"""Reading and writing Kubernetes manifests as plain data: multi-document YAML in, the same
documents out (key order kept, timestamps left as strings, duplicate keys refused)."""
from __future__ import annotations

from typing import Any, Iterable, List

import yaml

from fastproxy.errors import FastproxyError


class ManifestError(FastproxyError):
    """A manifest could not be read, or an object in it cannot be processed."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings and refuses duplicate mapping keys."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for k_node, v_node in node.value:
        key = loader.construct_object(k_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "unsupported mapping key",
                                                    k_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                    k_node.start_mark)
        out[key] = loader.construct_object(v_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key as kubectl prints them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def load_all(text: str, source: str = "<stdin>") -> List[Any]:
    """The documents of a YAML stream (empty documents dropped)."""
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ManifestError(f"YAML syntax error{where}: {what}", file=source) from e
    except yaml.YAMLError as e:
        raise ManifestError(f"YAML error: {e}", file=source) from e
    except RecursionError:
        raise ManifestError("YAML nested too deeply", file=source) from None


def dump_all(docs: Iterable[Any]) -> str:
    """`---`-separated YAML, keys in their original order."""
    return yaml.dump_all(list(docs), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, allow_unicode=True, width=4096)


def dump(doc: Any) -> str:
    """One document, without the leading `---`."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=4096)
