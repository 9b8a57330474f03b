#!/usr/bin/env bash
# Builds fastproxy's container image without any registry, as root:
#   1. a Debian base image, once: `debootstrap --variant=minbase` from Debian's archive into a
#      folder, imported with `podman import` as localhost/fastproxy-debian-minbase:<suite>
#      (reused while it exists; FASTPROXY_REBUILD_BASE=1 makes it again);
#   2. the Containerfile with buildah (chroot isolation: no OCI runtime is needed, which matters
#      where `podman run` cannot set rlimits), squashed into one layer.
# Usage: bash tests/image/build.sh [TAG]   (default localhost/fastproxy:<version>)
# Prints the image name and its size. Needs: debootstrap, podman, buildah (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
SUITE=${FASTPROXY_DEBIAN_SUITE:-bookworm}
# the Debian archive this machine's apt already uses (its first URI), unless told otherwise
apt_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    echo "$uri"
}
MIRROR=${FASTPROXY_DEBIAN_MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || { echo "build.sh: no Debian archive in apt's sources; set FASTPROXY_DEBIAN_MIRROR" >&2; exit 2; }
BASE=localhost/fastproxy-debian-minbase:$SUITE
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG=${1:-localhost/fastproxy:$VERSION}

for tool in debootstrap podman buildah; do
    command -v "$tool" >/dev/null || { echo "build.sh: needs $tool (apt-get install $tool)" >&2; exit 2; }
done

if [ "${FASTPROXY_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
    root=$(mktemp -d /var/tmp/fastproxy-debootstrap.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "build.sh: debootstrap --variant=minbase $SUITE" >&2
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/dev/null
    # the archive's sources for apt inside the build; no caches, no logs
    echo "deb $MIRROR $SUITE main" > "$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
    tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

# the host's CA bundle, for pip in the builder stage (a RUN-time mount: not in the image)
ca=()
host_ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -r "$host_ca" ] && ca=(-v "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
buildah bud --isolation chroot --squash --layers=false -q "${ca[@]}" \
    --build-arg "BASE=$BASE" -f Containerfile -t "$TAG" . >/dev/null
size=$(podman image inspect "$TAG" --format '{{.Size}}')
echo "$TAG $size"
