#!/usr/bin/env bash
# Runs a command in an image's root filesystem (from `buildah mount`), the way a container would
# see it, without an OCI runtime: a private mount namespace with /proc, /dev and a tmpfs /run,
# then chroot. --read-only: the root filesystem is mounted read-only (a pod's
# readOnlyRootFilesystem; /run stays writable, as the injected init container's emptyDir).
# Usage: run-in.sh ROOT [--read-only] [--userspec UID:GID] CMD...   (as root; inside
# `ip netns exec` for a network namespace). The image's PATH is used; SERVICE_ACCOUNT and
# POD_NAMESPACE are passed on when set.
set -euo pipefail
root=$1; shift
ro=0
user=()
while [ $# -gt 0 ]; do
    case "$1" in
        --read-only) ro=1; shift ;;
        --userspec) user=(--userspec="$2"); shift 2 ;;
        *) break ;;
    esac
done
exec unshare --mount --propagation private sh -c '
    root=$1; ro=$2; shift 2
    if [ "$ro" = 1 ]; then
        mount --bind "$root" "$root"
        mount -o remount,bind,ro "$root"
    fi
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/run"
    exec chroot "$@"' sh "$root" "$ro" "${user[@]}" "$root" \
    env -i PATH=/opt/fastproxy/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent \
        ${SERVICE_ACCOUNT:+SERVICE_ACCOUNT=$SERVICE_ACCOUNT} ${POD_NAMESPACE:+POD_NAMESPACE=$POD_NAMESPACE} "$@"
