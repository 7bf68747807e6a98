# spinneret: `make demo` and `make test` are the two commands a newcomer needs
# (both as root: they create network namespaces).

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
CONTROLLER_GEN := $(GOBIN)/controller-gen
CONTROLLER_GEN_VERSION := v0.23.0
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)

.PHONY: all build demo ref-plugins test unit lint fuzz fuzz-short cni-deps bench bench-baseline bench-ipam bench-kube bench-vm bench-whereabouts whereabouts-bin tools k8s-bins calico-bins helm-bin containerd-bins manifests deploy-check image generate clean

all: build

# the production build: static (a plugin copied onto a host from an image
# must not need the host's libc; without cgo it also starts 16 % sooner),
# no paths or symbol tables (fewer pages to map). The suite builds with the
# same flags (tests/env_test.go: prodBuildFlags).
GOBUILD     := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)"

build:
	$(GOBUILD) -o bin/spinneret .
	$(GOBUILD) -o bin/spinneret-controller ./cmd/spinneret-controller
	$(GOBUILD) -o bin/spinneret-node ./cmd/spinneret-node

## demo: attach pods in throwaway namespaces (underlay, then overlay over
## the reference ptp plugin), test traffic, clean up
demo: build ref-plugins
	./bin/spinneret demo -plugins bin/cni

## ref-plugins: the reference CNI plugins the demo's overlay scene runs as
## the cluster's CNI, built once from the Go module proxy (pinned)
REF_PLUGINS_VERSION := v1.9.1
ref-plugins: bin/cni/.$(REF_PLUGINS_VERSION)
bin/cni/.$(REF_PLUGINS_VERSION):
	GOBIN=$(CURDIR)/bin/cni $(GO) install github.com/containernetworking/plugins/plugins/main/ptp@$(REF_PLUGINS_VERSION) \
	  github.com/containernetworking/plugins/plugins/ipam/host-local@$(REF_PLUGINS_VERSION)
	touch $@

## test: formatting, vet, staticcheck, unit tests, the netns suite and the
## Kubernetes suite (a real kube-apiserver: built once per version, cached),
## then each fuzz target for FUZZTIME
test: lint k8s-bins calico-bins helm-bin containerd-bins
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) -s fuzz-short

## fuzz targets (package:function): every input a user or the runtime gives
FUZZ_TARGETS := request:FuzzNetworksAnnotation request:FuzzRoutesAnnotation request:FuzzResolve \
  conf:FuzzParse conf:FuzzNADNetwork conf:FuzzLoadNode cni:FuzzLoadJournal
FUZZTIME ?= 60s

## fuzz-short: each fuzz target for FUZZTIME (60s; make test runs it)
fuzz-short:
	GO=$(GO) FUZZTIME=$(FUZZTIME) tests/fuzz.sh $(FUZZ_TARGETS)

## fuzz: each fuzz target for 10 minutes
fuzz:
	$(MAKE) fuzz-short FUZZTIME=10m

## k8s-bins: build kube-apiserver from the Go module proxy (cached by version)
k8s-bins:
	tests/k8s/build-apiserver.sh
	tests/k8s/build-apiserver.sh v1.37.2 kubelet

## calico-bins: build Calico's CNI plugin and calico-ipam from the Go module
## proxy (cached by version), for the overlay suite's Calico test
calico-bins:
	tests/calico/build.sh

## containerd-bins: build containerd 2 (daemon, runc shim, ctr) from the Go
## module proxy (cached by version), for the end-to-end suite's second runtime
containerd-bins:
	@tests/containerd/build.sh >/dev/null

## helm-bin: build helm from the Go module proxy (cached by version)
helm-bin:
	@tests/helm/build.sh >/dev/null

HELM = $(shell tests/helm/build.sh 2>/dev/null)
CHART = deploy/helm/spinneret
MANIFESTS = rbac daemonset controller crds

## manifests: deploy/k8s/*.yaml, the chart rendered with its defaults
## (namespace kube-system); TestChart fails when they differ
manifests: helm-bin
	@for m in $(MANIFESTS); do \
	  $(HELM) template spinneret $(CHART) --namespace kube-system --show-only templates/$$m.yaml > deploy/k8s/$$m.yaml || exit 1; \
	done

## deploy-check: helm lint, and the chart against a real API server: every
## object of its defaults and of other values passes server-side dry run
## with strict field validation (the Kubernetes and CRD schemas), and
## deploy/k8s is what it renders
deploy-check: helm-bin k8s-bins
	$(HELM) lint --strict $(CHART)
	$(GO) test -count=1 -run '^TestChart' ./tests/

## image: the node and controller image for PLATFORMS, FROM scratch, static
## binaries (spinneret, spinneret-controller, spinneret-node, and the
## reference loopback plugin the installer puts where a node has none), as
## an OCI archive (IMAGE_OUT), built without a Docker daemon
## (hack/mkimage, go-containerregistry); `ctr -n k8s.io images import` takes it
IMAGE     ?= ghcr.io/spinneret-cni/spinneret:$(VERSION)
IMAGE_OUT ?= bin/spinneret-image.tar
IMAGE_DIR ?= bin/image
PLATFORMS ?= linux/amd64 linux/arm64
image:
	@set -e; args=; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; d=$(IMAGE_DIR)/$$os-$$arch; mkdir -p $$d; \
	  for b in .:spinneret ./cmd/spinneret-controller:spinneret-controller ./cmd/spinneret-node:spinneret-node \
	           github.com/containernetworking/plugins/plugins/main/loopback:loopback; do \
	    GOOS=$$os GOARCH=$$arch $(GOBUILD) -o $$d/$${b#*:} $${b%%:*}; \
	  done; \
	  args="$$args -platform $$p=$$d"; \
	done; \
	$(GO) run ./hack/mkimage -o $(IMAGE_OUT) -tag $(IMAGE) -version $(VERSION) $$args

## cni-deps: rewrite hack/cni-deps.txt's list (keeping its comments) from
## what the spinneret binary links now
cni-deps:
	@{ grep '^#' hack/cni-deps.txt; CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) list -deps .; } > hack/cni-deps.txt.new && mv hack/cni-deps.txt.new hack/cni-deps.txt

## unit: the tests that need neither root nor namespaces
unit:
	$(GO) test -count=1 ./conf/... ./request/... ./plan/... ./ipam/... ./cni/... ./internal/...

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags testhooks ./...
	$(GO) vet -tags vmtest ./tests/
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags testhooks ./...
	$(STATICCHECK) -tags vmtest ./tests/
	@# the plugin must not link client-go (its init alone costs ~6 ms per ADD)
	@! $(GO) list -deps . | grep -q '^k8s.io/client-go' || { echo "the spinneret binary links client-go"; exit 1; }
	@# the plugin links exactly the packages hack/cni-deps.txt allows
	@t=$$(mktemp -d) && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) list -deps . > $$t/now && grep -v '^#' hack/cni-deps.txt > $$t/allowed && \
	  { diff $$t/allowed $$t/now > $$t/diff || { echo "the packages the spinneret binary links changed (< dropped, > new); every ADD pays for each: justify it, then make cni-deps"; cat $$t/diff; rm -rf $$t; exit 1; }; }; rm -rf $$t
	@# the shipped binaries import nothing of the test suites
	@! $(GO) list -deps . ./cmd/... | grep -q '^github.com/spinneret-cni/spinneret/tests' || { echo "a shipped binary imports tests/"; exit 1; }
	@# the CRDs and deepcopy code must be what the Go types generate
	$(MAKE) -s generate
	@git diff --quiet -- deploy/crds ipam/apis $(CHART)/files/crds 2>/dev/null || \
	  { echo "deploy/crds, the chart's CRDs or ipam/apis is not what 'make generate' produces:"; git diff --stat -- deploy/crds ipam/apis $(CHART)/files/crds; exit 1; }

## generate: CRDs (deploy/crds) and deepcopy code from the API types
generate: tools
	$(CONTROLLER_GEN) object paths=./ipam/apis/...
	$(CONTROLLER_GEN) crd paths=./ipam/apis/... output:crd:dir=deploy/crds
	cp deploy/crds/*.yaml $(CHART)/files/crds/

tools:
	@[ -x $(STATICCHECK) ] && $(STATICCHECK) -version | grep -q '$(STATICCHECK_VERSION:v%=%)' || \
	  $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@[ -x $(CONTROLLER_GEN) ] && $(CONTROLLER_GEN) --version | grep -q '$(CONTROLLER_GEN_VERSION)' || \
	  $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

## bench: a 3-NIC pod through spinneret (three configs), its in-process
## floor, the Multus-style chain of the reference plugins and an empty Go
## binary's start, side by side with their ratios; start-up against an
## empty Go binary; CPU, page faults, system calls and peak RSS of a 3-NIC
## ADD; ADD and DEL p50/p90/p99 over 200 pods; ADD and DEL with 1, 100 and
## 1000 pods held; IPAM cost vs pods held
bench:
	$(GO) test -count=1 -timeout 90m -run '^$$' -bench 'BenchmarkCompare$$|BenchmarkStartup$$|BenchmarkADDCost$$|BenchmarkPodLifecycle$$|BenchmarkOverlay$$|BenchmarkFlat$$' -benchtime 1x ./tests/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkAllocateRelease -benchtime 200x ./ipam/

## bench-baseline: the pod lifecycle benchmark with every ADD and DEL
## interleaved with the same call through a binary built from BASELINE (a
## git revision; default eb2b641, the tree before the Shape issue): p50s and
## their new/old ratios, measured in the same run
BASELINE ?= eb2b641
bench-baseline:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  git archive $(BASELINE) | tar -x -C $$tmp && \
	  (cd $$tmp && $(GOBUILD) -o $$tmp/bin/spinneret .) && \
	  SPINNERET_BENCH_BASELINE=$$tmp/bin $(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkPodLifecycleVsBaseline -benchtime 1x ./tests/

## bench-ipam: the kubernetes IPAM backend at scale: 1000 allocations from
## 10 simulated nodes (processes, 100 at once each) into a pool of exactly
## 1000 against a real API server; total time, p50/p99, API requests per
## allocation, create conflicts, per request kind; then the cost of an
## allocation (requests, bytes read, p50) with 1,000, 10,000 and 50,000
## allocations held in the pool, from 10 and 100 nodes
bench-ipam: k8s-bins
	$(GO) test -count=1 -v -run '^TestKubeIPAMScale$$' ./tests/ | grep -v '^=== RUN'
	SPINNERET_IPAM_GROWTH=full $(GO) test -count=1 -timeout 60m -v -run '^TestKubeIPAMGrowth$$' ./tests/ | grep -v '^=== RUN'

## bench-whereabouts: TestKubeIPAMScale's workload (1000 allocations from
## 10 nodes) through spinneret's kubernetes backend and through Whereabouts
## (its plugin binary, one process per allocation) on one real API server,
## and the ratio; not in make test (Whereabouts is slow)
WHEREABOUTS_VERSION := v0.9.2
WHEREABOUTS_BIN := /var/cache/spinneret/whereabouts/$(WHEREABOUTS_VERSION)/whereabouts
bench-whereabouts: k8s-bins whereabouts-bin
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench '^BenchmarkWhereabouts$$' -benchtime 1x ./tests/ | grep -v '^=== RUN'

## whereabouts-bin: Whereabouts built from the Go module proxy (its go.mod
## has replace directives, so not go install pkg@version: a throwaway
## module requires it), cached by version
whereabouts-bin: $(WHEREABOUTS_BIN)
$(WHEREABOUTS_BIN):
	rm -rf $(CURDIR)/bin/.wa && mkdir -p $(CURDIR)/bin/.wa $(dir $@)
	cd $(CURDIR)/bin/.wa && $(GO) mod init wa-build >/dev/null 2>&1 && \
	  GONOSUMDB=github.com/k8snetworkplumbingwg GOFLAGS=-mod=mod $(GO) get github.com/k8snetworkplumbingwg/whereabouts@$(WHEREABOUTS_VERSION) && \
	  GONOSUMDB=github.com/k8snetworkplumbingwg GOFLAGS=-mod=mod $(GO) build -o $@.tmp github.com/k8snetworkplumbingwg/whereabouts/cmd && mv $@.tmp $@
	rm -rf $(CURDIR)/bin/.wa

## bench-kube: the Kubernetes part of an ADD and a DEL through the binary
## against a real API server: the requests each way makes (local or
## kubernetes IPAM, annotations from the runtime or the API), p50 of each,
## full and resumed TLS handshakes
bench-kube: k8s-bins
	$(GO) test -count=1 -v -run '^TestKubePath$$' ./tests/ | grep -v -e '^=== RUN' -e 'level='

## bench-vm: ipvlan and SR-IOV pods with two NICs, in the VM (Debian's
## kernel under emulation), against the same netlink work in-process there
bench-vm:
	SPINNERET_VM_RUN='^TestVMBench' $(GO) test -count=1 -v -run '^TestVM$$' ./tests/ | grep -E 'vm_bench_test|ok|FAIL'

clean:
	rm -rf bin
