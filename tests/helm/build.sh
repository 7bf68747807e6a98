#!/usr/bin/env bash
# Builds helm from the Go module proxy, once: cached by version in
# $SPINNERET_HELM_CACHE (default /var/cache/spinneret/helm) and reused by
# later runs. Prints the binary's path. (~3 min cold on 2 cores.)
#
# usage: build.sh
set -euo pipefail
ver=v4.3.2
cache=${SPINNERET_HELM_CACHE:-/var/cache/spinneret/helm}/$ver
bin=$cache/helm
if [ -x "$bin" ] && "$bin" version --short 2>/dev/null | grep -q "^$ver"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
GOBIN=$cache CGO_ENABLED=0 go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$ver" "helm.sh/helm/v4/cmd/helm@$ver" >&2
"$bin" version --short | grep -q "^$ver" || { echo "built helm is not $ver: $("$bin" version --short)" >&2; exit 1; }
echo "$bin"
