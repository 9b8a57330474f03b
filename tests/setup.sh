#!/usr/bin/env bash
# Prepares a bare Debian machine to run fastproxy's test suite, as root:
# Debian packages the tests use (real clients and servers, netfilter, namespaces), then a
# virtualenv made with /usr/bin/python3 under /opt (world-readable: the sidecar under test drops
# to UID 1500 and clients run as UID 1000), holding fastproxy's debug build and the test extras.
# Beside it, two sibling venvs that tests/test_builds.py runs the e2e tests against:
#   VENV-release  the release build (what ships: NDEBUG, -O2)
#   VENV-asan     the debug build compiled with AddressSanitizer + UndefinedBehaviorSanitizer, run
#                 through bin/python-asan (LD_PRELOADs the ASan runtime into CPython); reports go to
#                 /var/tmp/<venv name>-reports/ (bin/fastproxy-asan is the sidecar command)
# Idempotent. Usage: bash tests/setup.sh [VENV]   (default /opt/fastproxy-test)
set -euo pipefail
VENV=${1:-/opt/fastproxy-test}
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-dev gcc libc6-dev iptables iproute2 curl openssl iperf3
          procps util-linux psmisc ca-certificates clang)
# a real Prometheus server and promtool for the metrics tests (tests/test_metrics_prometheus.py)
packages+=(prometheus)
# libFuzzer and the ASan/UBSan runtimes for clang (the fuzz and sanitizer tests fail in CI without)
packages+=(libclang-rt-14-dev)
# RE2 (linked statically into the extension) and the C++ compiler for its shim (src_c/fp_re2.cc)
packages+=(libre2-dev g++)
# GNU time: the peak RSS of `fastproxy validate`/`run` on hostile files (tests/test_config_limits.py)
packages+=(time)
# the container image test (tests/test_image.py: debootstrap a base, build with buildah)
packages+=(debootstrap podman buildah)
# strace: the relay's syscalls per connection (tests/test_relay_syscalls_e2e.py)
packages+=(strace)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

# -- variant builds for tests/test_builds.py -----------------------------------------------------
# build_variant VENV [VAR=value ...]: a venv with PyYAML and fastproxy built with the given
# environment (FASTPROXY_DEBUG, CFLAGS, LDFLAGS).
build_variant() {
    local venv=$1; shift
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    # the runtime dependencies (pyproject's [project] dependencies), then the extension alone
    "$venv/bin/python" -m pip install -q $(/usr/bin/python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))') >/dev/null
    rm -rf build
    env "$@" "$venv/bin/python" -m pip install -q --force-reinstall --no-deps . >/dev/null
    rm -rf build
}
build_variant "$VENV-release" FASTPROXY_DEBUG=
(cd / && "$VENV-release/bin/python" -c 'import fastproxy._core as c; assert not c.DEBUG')

ASAN="$VENV-asan"
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"
build_variant "$ASAN" FASTPROXY_DEBUG=1 CFLAGS="$SAN_FLAGS" CXXFLAGS="$SAN_FLAGS" LDFLAGS="$SAN_FLAGS"
# CPython is not built with ASan: its runtime must be loaded first (LD_PRELOAD). CPython keeps
# memory until exit by design, so leak detection is off. Reports (any ASan error, any UBSan
# "runtime error") go to files in REPORTS, which the sidecar's UID 1500 can write.
LIBASAN=$(readlink -f "$(gcc -print-file-name=libasan.so)")
REPORTS="/var/tmp/$(basename "$ASAN")-reports"
mkdir -p "$REPORTS" && chmod 1777 "$REPORTS"
cat > "$ASAN/bin/python-asan" <<EOS
#!/bin/sh
# CPython with the ASan runtime preloaded, for fastproxy's ASan+UBSan build (tests/setup.sh).
export LD_PRELOAD=$LIBASAN
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$REPORTS/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan
exec $ASAN/bin/python "\$@"
EOS
chmod 755 "$ASAN/bin/python-asan"
# the sidecar command: the console script, run by python-asan (a script as interpreter is fine)
sed "1s|.*|#!$ASAN/bin/python-asan|" "$ASAN/bin/fastproxy" > "$ASAN/bin/fastproxy-asan"
chmod 755 "$ASAN/bin/fastproxy-asan"
(cd / && "$ASAN/bin/python-asan" -c 'import fastproxy._core as c; assert c.DEBUG')
grep -q libasan "$(cd / && "$ASAN/bin/python-asan" -c 'import fastproxy._core as c; print(c.__file__)')"
chmod -R a+rX "$VENV-release" "$ASAN"
echo "release build in $VENV-release, ASan+UBSan build in $ASAN (reports: $REPORTS)"
