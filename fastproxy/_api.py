"""fastproxy's public Python API (re-exported by `fastproxy`; see README "Python library").

Load and validate configuration, ask a compiled policy what it would do with a connection, and
run the proxy in-process. Every example below runs as a test (tests/test_api.py runs this
module's doctests from the checkout's root; `pytest --doctest-modules fastproxy/_api.py` too).

>>> import fastproxy
>>> cfg = fastproxy.parse_config('''
... apiVersion: config.flomesh.io/v1alpha3
... kind: MeshConfig
... metadata: {name: fsm-mesh-config, namespace: fsm-system}
... spec: {traffic: {enableEgress: false}}
... ''')
>>> fastproxy.explain_decision(cfg, "198.51.100.7:443").action
'deny'
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

import fastproxy  # noqa: F401 - the examples below say `fastproxy.`
from fastproxy.config.loader import Config, default_config, load
from fastproxy.policy import Decision, HttpRequest
from fastproxy.policy import compile_policy as _compile
from fastproxy.errors import ConfigError, ConfigErrors, FastproxyError

PathLike = Union[str, "os.PathLike[str]"]
Objects = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Problem:
    """One configuration error as data: where it is and what is wrong.

    `file` is the path (or the `name` given to `parse_config`), `object` reads `Kind ns/name`
    (or `document N` when the document has no identity yet), `field` is the dotted field path
    inside the object; any of them is None when unknown.

    >>> p = fastproxy.validate_config(objects={"apiVersion": "config.flomesh.io/v1alpha3",
    ...     "kind": "MeshConfig", "metadata": {"name": "m", "namespace": "x"},
    ...     "spec": {"sidecar": {"sidecarTimeout": "soon"}}})[0]
    >>> (p.object, p.field)
    ('MeshConfig x/m', 'spec.sidecar.sidecarTimeout')
    """

    file: Optional[str]
    object: Optional[str]
    field: Optional[str]
    message: str

    def __str__(self) -> str:
        return ": ".join([p for p in (self.file, self.object, self.field) if p] + [self.message])


def _problems(e: ConfigError) -> List[Problem]:
    errs = e.errors if isinstance(e, ConfigErrors) else [e]
    return [Problem(x.file, x.obj, x.field, x.message) for x in errs]


def load_config(*paths: PathLike, service_account: Optional[str] = None,
                namespace: Optional[str] = None) -> Config:
    """Load and validate the manifests in `paths` (files, or folders of `*.yaml`/`*.yml`/`*.json`),
    as the sidecar of `service_account` in `namespace` sees them (an `Egress` applies only to the
    identities in its `sources`). No paths: the embedded default (FSM's chart defaults).

    Raises `ConfigErrors` (its `errors` hold every problem; `problems(e)` as data).

    >>> fastproxy.load_config().mesh.enable_egress
    True
    """
    if not paths:
        cfg = default_config()
        cfg.service_account, cfg.namespace = service_account, namespace
        return cfg
    try:
        return load(list(paths), service_account=service_account, namespace=namespace)
    except ConfigErrors:
        raise
    except ConfigError as e:
        raise ConfigErrors([e]) from e


def _rename(cfg: Config, tmp: str, name: str) -> Config:
    for obj in [cfg.mesh, cfg.pipy, *cfg.egresses, *cfg.http_route_groups,
                *cfg.upstream_traffic_settings, *cfg.services]:
        if obj is not None and getattr(obj, "file", None) == tmp:
            obj.file = name
    cfg.files = [name if f == tmp else f for f in cfg.files]
    cfg.ignored = [name + i[len(tmp):] if i.startswith(tmp) else i for i in cfg.ignored]
    return cfg


def parse_config(source: Union[str, bytes, Objects], *, service_account: Optional[str] = None,
                 namespace: Optional[str] = None, name: str = "<string>") -> Config:
    """Like `load_config` for configuration held in memory: YAML or JSON text (several `---`
    documents allowed), one object as a dict, or a list of them. Errors name the file `name`.

    >>> cfg = fastproxy.parse_config([{"apiVersion": "config.flomesh.io/v1alpha3",
    ...     "kind": "MeshConfig", "metadata": {"name": "m", "namespace": "fsm-system"},
    ...     "spec": {"sidecar": {"logLevel": "debug"}}}])
    >>> (cfg.mesh.log_level, cfg.mesh.enable_egress)
    ('debug', True)
    """
    if isinstance(source, bytes):
        text = source.decode("utf-8")
    elif isinstance(source, str):
        text = source
    else:
        docs = [source] if isinstance(source, Mapping) else list(source)
        try:
            text = yaml.safe_dump_all([dict(d) if isinstance(d, Mapping) else d for d in docs],
                                      sort_keys=False)
        except yaml.YAMLError as e:
            raise ConfigErrors([ConfigError(f"holds a value that is not plain data: {e}",
                                            file=name)]) from None
    with tempfile.TemporaryDirectory(prefix="fastproxy-") as d:
        tmp = os.path.join(d, "config.yaml")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            cfg = load([tmp], service_account=service_account, namespace=namespace)
        except ConfigError as e:
            errs = e.errors if isinstance(e, ConfigErrors) else [e]
            for one in errs:
                if one.file == tmp:
                    one.file = name
            raise ConfigErrors(errs) from None
    return _rename(cfg, tmp, name)


def validate_config(*paths: PathLike, text: Optional[str] = None,
                    objects: Optional[Objects] = None) -> List[Problem]:
    """Every problem in the configuration given as paths, text or objects (one of them); an empty
    list when it is valid.

    >>> fastproxy.validate_config(text="kind: Egress")[0].field
    'apiVersion'
    """
    given = [x for x in (paths or None, text, objects) if x is not None]
    if len(given) != 1:
        raise TypeError("give paths, text= or objects=, exactly one of them")
    try:
        if paths:
            load_config(*paths)
        else:
            parse_config(text if text is not None else objects)  # type: ignore[arg-type]
    except ConfigError as e:
        return _problems(e)
    return []


def problems(error: ConfigError) -> List[Problem]:
    """The problems a `ConfigError` (or `ConfigErrors`) carries, as data."""
    return _problems(error)


# ---------------------------------------------------------------------------------------------
# decisions


def _decide(cfg: Config, ip: str, port: int, *, sni: Optional[str], http: Optional[HttpRequest],
            connect_to_host: bool, fsm_port_narrowing: bool, compiled: Dict[str, Any]) -> Decision:
    """The one place the library asks for a decision: the C decision table `fastproxy run` would
    build for `cfg`, asked as `fastproxy explain` asks it. `compiled` caches the table per Policy."""
    from fastproxy.explain import decide_compiled
    from fastproxy.tables import compile_table

    if "table" not in compiled:
        compiled["table"] = compile_table(_compile(cfg, connect_to_host=connect_to_host,
                                                   fsm_port_narrowing=fsm_port_narrowing))
    return decide_compiled(compiled["table"], ip, port, sni=sni, http=http)


def _destination(destination: Union[str, Tuple[str, int]], port: Optional[int]) -> Tuple[str, int]:
    from fastproxy.explain import parse_dest

    if isinstance(destination, tuple):
        ip, port = destination
        return parse_dest(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    if port is not None:
        return parse_dest(f"[{destination}]:{port}" if ":" in destination else f"{destination}:{port}")
    return parse_dest(destination)


class Policy:
    """A configuration compiled for one sidecar identity; `decide` answers for one connection.

    >>> cfg = fastproxy.load_config("config/examples/egress-policy-demo.yaml",
    ...     "config/examples/meshconfig-egress-off.yaml",
    ...     service_account="curl", namespace="curl")
    >>> policy = fastproxy.compile_policy(cfg)
    >>> d = policy.decide("203.0.113.5:80", host="httpbin.org", path="/get")
    >>> (d.action, d.object)
    ('allow', 'Egress curl/httpbin-80')
    >>> policy.decide("203.0.113.5:80", host="example.com").action
    'deny'
    """

    def __init__(self, config: Config, *, connect_to_host: bool = False,
                 fsm_port_narrowing: bool = False) -> None:
        self.config = config
        self.connect_to_host = connect_to_host
        self.fsm_port_narrowing = fsm_port_narrowing
        self._compiled: Dict[str, Any] = {}

    def decide(self, destination: Union[str, Tuple[str, int]], port: Optional[int] = None, *,
               sni: Optional[str] = None, host: Optional[str] = None, path: str = "/",
               method: str = "GET", headers: Optional[Mapping[str, str]] = None) -> Decision:
        """What the sidecar does with a connection to `destination` (`"IP:PORT"`, `"[IPv6]:PORT"`,
        `(ip, port)`, or an IP and `port`). `sni` is the TLS server name the client sends;
        `host` (with `path`, `method`, `headers`) an HTTP request on it. Neither: the answer may
        be `need-sni` / `need-http-head` / `need-peek` (it depends on bytes not given).

        `Decision.action` is one of mesh, allow, passthrough, deny, need-*; `object` and `rule`
        say what made it; `upstream` where it connects; `http_status` 403 for a denied request.
        """
        if sni is not None and host is not None:
            raise ValueError("give sni or host, not both")
        ip, p = _destination(destination, port)
        req = HttpRequest.make(host, path, method, dict(headers or {})) if host is not None else None
        return _decide(self.config, ip, p, sni=sni, http=req, connect_to_host=self.connect_to_host,
                       fsm_port_narrowing=self.fsm_port_narrowing, compiled=self._compiled)


def compile_policy(config: Config, *, connect_to_host: bool = False,
                   fsm_port_narrowing: bool = False) -> Policy:
    """Compile `config` (for the identity it was loaded for) into a `Policy`.

    `connect_to_host`: http/https allows dial the policy's host name instead of the original
    destination; `fsm_port_narrowing`: FSM's behaviour, a port carrying a policy denies what the
    policy does not allow even with passthrough on."""
    return Policy(config, connect_to_host=connect_to_host, fsm_port_narrowing=fsm_port_narrowing)


def explain_decision(config: Config, destination: Union[str, Tuple[str, int]], port: Optional[int] = None,
            **request: Any) -> Decision:
    """One decision: `compile_policy(config).decide(destination, port, **request)`.

    >>> d = fastproxy.explain_decision(fastproxy.load_config(), ("2001:db8::1", 443), sni="example.com")
    >>> (d.action, d.upstream)
    ('passthrough', '[2001:db8::1]:443')
    """
    return compile_policy(config).decide(destination, port, **request)


# ---------------------------------------------------------------------------------------------
# the proxy in-process


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _refuse_taken(address: str, port: int, optional: bool = False) -> None:
    """The engine's listeners use SO_REUSEPORT, so a second engine on a taken port would quietly
    share it: bind a plain socket first (SO_REUSEADDR tolerates TIME_WAIT leftovers, not a
    listener). `optional`: an address family the host lacks is not an error (the engine skips
    an IPv6 listener it cannot have when it has an IPv4 one)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        if optional and e.errno == errno.EAFNOSUPPORT:
            return
        raise
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            if optional and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return
            raise FastproxyError(f"cannot listen on {address} port {port}: {e.strerror}") from e


class Proxy:
    """The data plane running in this process, as a context manager: it listens on `port`
    (`0`: a free one) and relays what netfilter redirects there (`fastproxy.iptables`'s rules,
    or your own `REDIRECT --to-ports PORT`), deciding each connection by `config`. A connection
    made to the port directly, not redirected, has no original destination and is reset.

    Leaving the block stops accepting, lets open connections finish for up to `drain_seconds`,
    resets the rest and frees everything. `stats()` reads the C counters.

    >>> proxy = fastproxy.Proxy(port=0, bind="127.0.0.1", bind_v6=None).start()
    >>> s = socket.create_connection(("127.0.0.1", proxy.port))
    >>> s.recv(1)   # not redirected: no original destination, so a reset
    Traceback (most recent call last):
    ...
    ConnectionResetError: [Errno 104] Connection reset by peer
    >>> s.close()
    >>> proxy.stats()["cx_accepted"]
    1
    >>> proxy.stop()

    As a context manager, with the mesh configuration of your choice:

    >>> with fastproxy.Proxy(fastproxy.load_config("config/"), port=0, workers=2) as proxy:
    ...     proxy.stats()["cx_active"]
    0
    """

    def __init__(self, config: Optional[Config] = None, *, port: int = 15001, workers: int = 1,
                 bind: Optional[str] = "127.0.0.1", bind_v6: Optional[str] = "::1",
                 splice: bool = True, connect_to_host: bool = False,
                 fsm_port_narrowing: bool = False, peek_timeout: float = 5.0,
                 drain_seconds: float = 5.0) -> None:
        if bind is None and bind_v6 is None:
            raise ValueError("bind and bind_v6 cannot both be None")
        self.config = config if config is not None else default_config()
        self.port = port or _free_port(bind or bind_v6 or "127.0.0.1")
        self.workers = workers
        self._bind = bind or ""
        self._bind6 = bind_v6 or ""
        self._splice = splice
        self._connect_to_host = connect_to_host
        self._fsm_port_narrowing = fsm_port_narrowing
        self._peek_ms = max(1, int(peek_timeout * 1000))
        self.drain_seconds = drain_seconds
        self._engine: Any = None
        self._limits: Any = None

    def _table(self, config: Config) -> Any:
        from fastproxy import _core  # type: ignore[attr-defined]
        from fastproxy.tables import build_table

        if self._limits is None:  # connection-limit counters, kept across reloads
            self._limits = _core.Limits()

        policy = _compile(config, connect_to_host=self._connect_to_host,
                          fsm_port_narrowing=self._fsm_port_narrowing)
        return build_table(policy, peek_timeout_ms=self._peek_ms, limits=self._limits)

    def start(self) -> "Proxy":
        """Bind and start the workers (raises `FastproxyError` when the port is taken)."""
        from fastproxy import _core  # type: ignore[attr-defined]

        if self._engine is not None:
            raise FastproxyError("already started")
        if self._bind:
            _refuse_taken(self._bind, self.port)
        if self._bind6:
            _refuse_taken(self._bind6, self.port, optional=bool(self._bind))
        self._engine = _core.Engine(self._table(self.config), workers=self.workers, port=self.port,
                                    bind_v4=self._bind, bind_v6=self._bind6, splice=self._splice)
        self._engine.start()
        return self

    def reload(self, config: Config) -> None:
        """Install `config` for new connections; open ones keep the one they were admitted by."""
        self._live().set_table(self._table(config))
        self.config = config

    def stats(self) -> Dict[str, Any]:
        """The C counters (connections accepted/active/closed, bytes each way, pipes, ...)."""
        return dict(self._live().stats())

    def wait(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Poll `stats()` until `predicate(stats)` holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stats()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop(self) -> None:
        """Drain (up to `drain_seconds`) and free the engine. Safe to call twice."""
        e, self._engine = self._engine, None
        if e is None:
            return
        try:
            e.stop_accepting()
            deadline = time.monotonic() + self.drain_seconds
            while e.stats()["cx_active"] and time.monotonic() < deadline:
                time.sleep(0.01)
            e.shutdown()
        finally:
            e.close()

    def _live(self) -> Any:
        if self._engine is None:
            raise FastproxyError("the proxy is not running")
        return self._engine

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Kubernetes


def inject(manifests: str, *, image: Optional[str] = None, legacy_sidecar: bool = False,
           configmap: Optional[str] = None) -> str:
    """`fastproxy inject` on YAML text: the same documents with fastproxy added to every pod
    template (idempotent; other objects unchanged).

    >>> out = fastproxy.inject("apiVersion: v1\\nkind: Pod\\nmetadata: {name: p}\\n"
    ...                        "spec: {containers: [{name: app, image: busybox}]}\\n")
    >>> [c["name"] for c in yaml.safe_load(out)["spec"]["initContainers"]]
    ['fastproxy-init', 'fastproxy']
    >>> fastproxy.inject(out) == out
    True
    """
    from fastproxy.k8s.inject import DEFAULT_CONFIGMAP, DEFAULT_IMAGE, InjectOptions, inject_text

    opts = InjectOptions(image=image or DEFAULT_IMAGE, configmap=configmap or DEFAULT_CONFIGMAP,
                         legacy_sidecar=legacy_sidecar)
    return inject_text(manifests, opts, "<string>")[0]

