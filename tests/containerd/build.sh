#!/usr/bin/env bash
# Builds containerd 2 (the daemon, its runc shim and ctr) from the Go module
# proxy, once: cached by version in $SPINNERET_CONTAINERD_CACHE (default
# /var/cache/spinneret/containerd) and reused by later runs. Prints the
# directory of the binaries. The end-to-end suite runs under it as well as
# under Debian's containerd 1.6. Static, without the btrfs, devmapper and
# zfs snapshotters (cgo and their libraries; the suite uses overlayfs).
#
# usage: build.sh [VERSION]   (default v2.4.2)
set -euo pipefail
ver=${1:-v2.4.2}
cache=${SPINNERET_CONTAINERD_CACHE:-/var/cache/spinneret/containerd}/$ver
if [ -x "$cache/containerd" ] && [ -x "$cache/containerd-shim-runc-v2" ] && [ -x "$cache/ctr" ] &&
  "$cache/containerd" --version 2>/dev/null | grep -q " $ver "; then
  echo "$cache"
  exit 0
fi
mkdir -p "$cache"
m=github.com/containerd/containerd/v2
GOBIN=$cache CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X $m/version.Version=$ver" \
  "$m/cmd/containerd@$ver" "$m/cmd/containerd-shim-runc-v2@$ver" "$m/cmd/ctr@$ver" >&2
"$cache/containerd" --version | grep -q " $ver " || { echo "built containerd is not $ver: $("$cache/containerd" --version)" >&2; exit 1; }
echo "$cache"
