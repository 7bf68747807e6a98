#!/usr/bin/env bash
# Builds Calico's CNI plugin (calico, and calico-ipam: the same binary,
# which picks its role from the name it runs as) from the Go module proxy,
# with the CRDs its ADD needs (crds/), once: cached by version in $SPINNERET_CALICO_CACHE (default
# /var/cache/spinneret/calico) and reused by later runs. Prints the
# directory holding both.
#
# Calico's v3 tags are no valid Go versions for its module path (no /v3
# suffix): the proxy serves the tagged commits as pseudo-versions, v3.31.0
# as the one below (the newest one it serves). `go install pkg@version`
# refuses the module (its go.mod replaces ./api and ./lib/std with local
# paths), so a scratch module requires it, copies its replace block with
# those two pointed at the same commit's modules, and drops
# lib/httpmachinery (not on the proxy, not linked by the CNI plugin). The
# checksum database does not answer for these pseudo-versions through this
# proxy: GONOSUMDB for github.com/projectcalico, as for whereabouts.
#
# usage: build.sh
set -euo pipefail
ver=v3.31.0
cal=v0.0.0-20251021213802-b1f3c43f8437 # github.com/projectcalico/calico at v3.31.0
api=v0.0.0-20251022175904-f2ab03771208 # github.com/projectcalico/api, the same Go source as v3.31.0's api/
cache=${SPINNERET_CALICO_CACHE:-/var/cache/spinneret/calico}/$ver
if [ -x "$cache/calico" ] && [ -L "$cache/calico-ipam" ] && [ -d "$cache/crds" ] && "$cache/calico" -v 2>/dev/null | grep -q "$ver"; then
  echo "$cache"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GONOSUMDB=github.com/projectcalico GOFLAGS=-mod=mod
go mod init spinneret-calico-bins >/dev/null 2>&1
go get "github.com/projectcalico/calico@$cal" >&2
sed -n '/^replace (/,/^)/p' "$(go env GOMODCACHE)/github.com/projectcalico/calico@$cal/go.mod" |
  sed -e "s#=> ./api\$#=> github.com/projectcalico/api $api#" \
      -e "s#=> ./lib/std\$#=> github.com/projectcalico/calico/lib/std $cal#" \
      -e '/lib\/httpmachinery/d' >> go.mod
go get "github.com/projectcalico/calico/cni-plugin/cmd/calico@$cal" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/projectcalico/calico/pkg/buildinfo.Version=$ver" \
  -o "$cache/calico.tmp" github.com/projectcalico/calico/cni-plugin/cmd/calico >&2
mkdir -p "$cache/crds"
for crd in ippools ipamblocks blockaffinities ipamhandles ipamconfigs clusterinformations ipreservations; do
  cp "$(go env GOMODCACHE)/github.com/projectcalico/calico@$cal/libcalico-go/config/crd/crd.projectcalico.org_$crd.yaml" "$cache/crds/"
done
chmod -R u+w "$cache/crds"
mv "$cache/calico.tmp" "$cache/calico"
ln -sf calico "$cache/calico-ipam"
echo "$cache"
