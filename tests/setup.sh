#!/usr/bin/env bash
# Prepares a bare Debian machine to run fastproxy's test suite, as root:
# Debian packages the tests use (real clients and servers, netfilter, namespaces), then a
# virtualenv made with /usr/bin/python3 under /opt (world-readable: the sidecar under test drops
# to UID 1500 and clients run as UID 1000), holding fastproxy's debug build and the test extras.
# Idempotent. Usage: bash tests/setup.sh [VENV]   (default /opt/fastproxy-test)
set -euo pipefail
VENV=${1:-/opt/fastproxy-test}
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-dev gcc libc6-dev iptables iproute2 curl openssl iperf3
          procps util-linux psmisc ca-certificates clang)
# a real Prometheus server and promtool for the metrics tests (tests/test_metrics_prometheus.py)
packages+=(prometheus)
# RE2 (linked statically into the extension) and the C++ compiler for its shim (src_c/fp_re2.cc)
packages+=(libre2-dev g++)
# GNU time: the peak RSS of `fastproxy validate`/`run` on hostile files (tests/test_config_limits.py)
packages+=(time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# libFuzzer's runtime for the peek fuzz test (its name follows clang's version; optional: the
# test skips itself without it)
if ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "ok installed"; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-rt-14-dev \
        >/dev/null 2>&1 || echo "note: libclang-rt-14-dev not available; the libFuzzer test will skip"
fi

[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q '.[test]' >/dev/null
# Then the debug build (FP_DEBUG): live counters of connections, pipes and fds that the tests
# check. build/ is removed so that no object compiled without FP_DEBUG is reused.
rm -rf build
FASTPROXY_DEBUG=1 "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps . >/dev/null
rm -rf build
chmod -R a+rX "$VENV"
(cd / && "$VENV/bin/python" -c 'import fastproxy._core as c; assert c.DEBUG, "debug build expected"; print("fastproxy debug build ready in", __import__("sys").prefix)')
