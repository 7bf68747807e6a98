#!/usr/bin/env bash
# Builds kube-apiserver (or another command of k8s.io/kubernetes: kubelet)
# VERSION from the Go module proxy, once: the binary is cached by version in
# $SPINNERET_K8S_CACHE (default /var/cache/spinneret/k8s) and reused by later
# runs. Prints the binary's path.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@VERSION` refuses: the
# module replaces its staging modules (k8s.io/api, ...) with local paths. A
# scratch module that requires k8s.io/kubernetes and pins every staging
# module to the matching v0.MINOR.PATCH builds it.
#
# usage: build-apiserver.sh [VERSION [COMMAND]]   (default v1.37.2 kube-apiserver)
set -euo pipefail
ver=${1:-v1.37.2}
cmd=${2:-kube-apiserver}
cache=${SPINNERET_K8S_CACHE:-/var/cache/spinneret/k8s}/$ver
bin=$cache/$cmd
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$ver"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init probe >/dev/null 2>&1
gomod=$(go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$ver")
gover=$(awk '$1=="go"{print $2; exit}' "$gomod")
staging=v0.${ver#v1.}
{
  echo "module spinneret-k8s-bins"
  echo
  echo "go $gover"
  echo
  echo "require k8s.io/kubernetes $ver"
  echo
  echo "replace ("
  awk '$2=="v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u |
    while read -r m; do echo "	$m => $m $staging"; done
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
go mod tidy >&2
minor=${ver#v1.}; minor=${minor%%.*}
v=k8s.io/component-base/version
ld="-s -w -X $v.gitVersion=$ver -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$bin.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
mv "$bin.tmp" "$bin"
echo "$bin"
