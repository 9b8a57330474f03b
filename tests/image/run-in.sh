#!/usr/bin/env bash
# Runs a command in an image's root filesystem (from `buildah mount`), the way a container would
# see it, without an OCI runtime: a private mount namespace with /proc and /dev, then chroot.
# Usage: run-in.sh ROOT [--userspec UID:GID] CMD...   (as root; inside `ip netns exec` for a
# network namespace). The image's PATH is used.
set -euo pipefail
root=$1; shift
user=()
if [ "${1:-}" = "--userspec" ]; then user=(--userspec="$2"); shift 2; fi
exec unshare --mount --propagation private sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/run"
    exec chroot "$@"' sh "$root" "${user[@]}" "$root" \
    env -i PATH=/opt/fastproxy/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent \
        ${SERVICE_ACCOUNT:+SERVICE_ACCOUNT=$SERVICE_ACCOUNT} ${POD_NAMESPACE:+POD_NAMESPACE=$POD_NAMESPACE} "$@"
