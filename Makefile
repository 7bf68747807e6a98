# spinneret: `make demo` and `make test` are the two commands a newcomer needs
# (both as root: they create network namespaces).

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)

.PHONY: all build demo test unit lint bench tools k8s-bins clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/spinneret .

## demo: attach two pods in throwaway namespaces, test traffic, clean up
demo: build
	./bin/spinneret demo

## test: formatting, vet, staticcheck, unit tests, the netns suite and the
## Kubernetes suite (a real kube-apiserver: built once per version, cached)
test: lint k8s-bins
	$(GO) test -count=1 -timeout 30m ./...

## k8s-bins: build kube-apiserver from the Go module proxy (cached by version)
k8s-bins:
	tests/k8s/build-apiserver.sh

## unit: the tests that need neither root nor namespaces
unit:
	$(GO) test -count=1 ./conf/... ./ipam/... ./cni/... ./internal/...

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags testhooks ./...
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags testhooks ./...

tools:
	@[ -x $(STATICCHECK) ] && $(STATICCHECK) -version | grep -q '$(STATICCHECK_VERSION:v%=%)' || \
	  $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## bench: ADD and DEL p50/p90/p99 over 200 pods, and IPAM cost vs pods held
bench:
	$(GO) test -count=1 -run '^$$' -bench BenchmarkPodLifecycle -benchtime 1x ./tests/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkAllocateRelease -benchtime 200x ./ipam/

clean:
	rm -rf bin
