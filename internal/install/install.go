// Package install puts spinneret on a node, as the DaemonSet's init
// container runs it: the binary, the node's kubeconfig, the node conf and
// the conflist. Everything is validated before anything is written, each
// file is replaced by a rename (a runtime may be executing the binary or
// reading the conflist at that moment), and the conflist comes last: the
// runtime calls spinneret only once the binary and its config are there.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
)

// ConflistName is the only file spinneret installs in the CNI conf dir.
const ConflistName = "00-spinneret.conflist"

// Options say where things come from and go to. Paths are as the installer
// sees them (the host's directories mounted into its container).
type Options struct {
	// Binary is the spinneret binary to install (the running one).
	Binary string
	// ConfigDir holds the cluster's config (the ConfigMap): ConflistName
	// and node.yaml.
	ConfigDir string
	// CNIBinDir, CNIConfDir and EtcDir are the host's /opt/cni/bin,
	// /etc/cni/net.d and /etc/spinneret.
	CNIBinDir, CNIConfDir, EtcDir string
	// NodeName is this node's Kubernetes name, written into the node conf.
	NodeName string
	// ServiceAccountDir, when set, holds the ServiceAccount's ca.crt and
	// token, copied to EtcDir with a kubeconfig naming APIServer.
	ServiceAccountDir string
	APIServer         string
	// HostEtcDir is EtcDir as the host (and so the plugin) sees it, for the
	// paths inside the kubeconfig.
	HostEtcDir string
	// Loopback, when set, is a loopback CNI plugin installed into
	// CNIBinDir where the node has none: the runtime runs it for every
	// sandbox's lo, and a node set up for spinneret alone may lack it.
	Loopback string
}

// Run installs spinneret on the node.
func Run(o Options) error {
	conflist, err := os.ReadFile(filepath.Join(o.ConfigDir, ConflistName))
	if err != nil {
		return err
	}
	if _, err := conf.ParseFile(conflist); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(o.ConfigDir, ConflistName), err)
	}
	nodeConf, err := NodeConf(filepath.Join(o.ConfigDir, "node.yaml"), o.NodeName)
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return err
	}
	var loopback []byte
	if o.Loopback != "" {
		if _, err := os.Stat(filepath.Join(o.CNIBinDir, "loopback")); errors.Is(err, os.ErrNotExist) {
			if loopback, err = os.ReadFile(o.Loopback); err != nil {
				return err
			}
		}
	}
	var kubeconfig, ca, token []byte
	if o.ServiceAccountDir != "" {
		if ca, err = os.ReadFile(filepath.Join(o.ServiceAccountDir, "ca.crt")); err != nil {
			return err
		}
		if token, err = os.ReadFile(filepath.Join(o.ServiceAccountDir, "token")); err != nil {
			return err
		}
		if o.APIServer == "" {
			return errors.New("a kubeconfig needs the API server's address (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT)")
		}
		kubeconfig = Kubeconfig(o.APIServer, o.HostEtcDir)
	}

	// the binary first, the conflist last
	if err := os.MkdirAll(o.CNIBinDir, 0o755); err != nil {
		return err
	}
	if err := fileutil.WriteAtomicMode(filepath.Join(o.CNIBinDir, "spinneret"), bin, 0o755); err != nil {
		return err
	}
	if loopback != nil {
		if err := fileutil.WriteAtomicMode(filepath.Join(o.CNIBinDir, "loopback"), loopback, 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.EtcDir, 0o755); err != nil {
		return err
	}
	if kubeconfig != nil {
		for _, f := range []struct {
			name string
			data []byte
		}{{"ca.crt", ca}, {"token", token}, {"kubeconfig", kubeconfig}} {
			if err := fileutil.WriteAtomicMode(filepath.Join(o.EtcDir, f.name), f.data, 0o600); err != nil {
				return err
			}
		}
	}
	if err := fileutil.WriteAtomicMode(filepath.Join(o.EtcDir, "node.yaml"), nodeConf, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(o.CNIConfDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(o.CNIConfDir, ConflistName)
	if err := fileutil.WriteAtomicMode(path, conflist, 0o644); err != nil {
		return err
	}
	return announce(path, int64(len(conflist)))
}

// announce makes a runtime watching the conf dir reload it once the
// conflist is in place. containerd (1.6, 1.7: pkg/cri/server/
// cni_conf_syncer.go) reloads on a Write, Rename or Remove event and
// ignores Create and Chmod, "only reload config when receiving
// write/rename/remove events"; a rename into the directory is a Create,
// and the Write event of the temporary file comes before the rename, so
// containerd would reload before the new conflist is there and never
// after. Truncating the installed file to its own length changes nothing
// in it and is a Write event (IN_MODIFY) on its name.
func announce(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// NodeConf is the cluster's node conf (path) with this node's name set,
// checked by parsing it as the plugin will. The name is the node's alone:
// a nodeName in the shared file other than empty is refused, and the key is
// set once, so the result has no duplicate keys (which YAML forbids).
func NodeConf(path, nodeName string) ([]byte, error) {
	if !conf.ValidObjectName(nodeName) {
		return nil, fmt.Errorf("node name %q is not a valid Kubernetes node name (set NODE_NAME from spec.nodeName)", nodeName)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a mapping of keys to values", path)
	}
	var m map[string]any // decoding into a map refuses duplicate keys
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	set := false
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "nodeName" {
			continue
		}
		if v := top.Content[i+1].Value; v != "" && v != nodeName {
			return nil, fmt.Errorf("%s: nodeName %q: the shared node conf must not name a node (the installer sets each node's own)", path, v)
		}
		top.Content[i+1] = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: nodeName}
		set = true
	}
	if !set {
		top.Content = append(top.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: "nodeName", HeadComment: "this node's Kubernetes name, set by spinneret install"},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: nodeName})
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	enc.Close()
	// parsed as the plugin parses it, from a file like the one installed
	tmp, err := os.CreateTemp("", "spinneret-node-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(out.Bytes())
	tmp.Close()
	if err != nil {
		return nil, err
	}
	n, err := conf.LoadNode(tmp.Name(), true)
	if err != nil {
		return nil, fmt.Errorf("%s with nodeName %s: %s", path, nodeName, strings.TrimPrefix(err.Error(), "node conf "+tmp.Name()+": "))
	}
	if n.NodeName != nodeName {
		return nil, fmt.Errorf("%s: the node conf reads nodeName %q, want %q (SPINNERET_NODE_NAME in the installer's environment?)", path, n.NodeName, nodeName)
	}
	return out.Bytes(), nil
}

// Kubeconfig is the node's kubeconfig: the API server, and the CA and the
// token in etcDir as the host sees it.
func Kubeconfig(server, etcDir string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: u, user: {tokenFile: %q}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, server, filepath.Join(etcDir, "ca.crt"), filepath.Join(etcDir, "token"))
}

// RefreshToken copies the ServiceAccount's token to EtcDir when it
// changed: the kubelet rotates a projected token at 80% of its life, and
// the plugin reads the copy on every call. It reports whether it copied.
func RefreshToken(o Options) (bool, error) {
	if o.ServiceAccountDir == "" {
		return false, nil
	}
	token, err := os.ReadFile(filepath.Join(o.ServiceAccountDir, "token"))
	if err != nil {
		return false, err
	}
	dst := filepath.Join(o.EtcDir, "token")
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, token) {
		return false, nil
	}
	return true, fileutil.WriteAtomicMode(dst, token, 0o600)
}
