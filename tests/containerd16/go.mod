module github.com/spinneret-cni/spinneret/tests/containerd16

go 1.26.8

require github.com/containerd/go-cni v1.1.6

require github.com/containernetworking/cni v1.1.1
