// Package k8senv runs a real etcd and kube-apiserver on 127.0.0.1 for the
// project's Kubernetes tests, and builds the API server once per version
// (tests/k8s/build-apiserver.sh).
package k8senv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// APIServer is an etcd and a kube-apiserver on 127.0.0.1, started for a
// test and stopped by PID. Authentication is a static token in
// system:masters; the serving certificate is self-signed.
type APIServer struct {
	URL   string // https://127.0.0.1:<port>
	Token string
	// NobodyToken authenticates a user with no role at all: every
	// request it makes is forbidden (403).
	NobodyToken string
	// NodeTokens authenticate the per-node users spinneret:node:<node>
	// (group spinneret:nodes) of the nodes node-a and node-b
	NodeTokens map[string]string
	Kubeconfig string
	dir        string
	procs      []*exec.Cmd
	in         InNS
	// apiserver is how kube-apiserver was started (for Restart)
	apiserver []string
}

// CertFile is the API server's serving certificate (self-signed, for
// 127.0.0.1 and localhost): the CA a client verifies it with.
func (a *APIServer) CertFile() string { return filepath.Join(a.dir, "pki", "apiserver.crt") }

// InNS runs fn inside a network namespace (such as harness.NS.Do); nil
// means the caller's own.
type InNS func(fn func() error) error

func (a *APIServer) run(fn func() error) error {
	if a.in == nil {
		return fn()
	}
	return a.in(fn)
}

// freePort asks the kernel for an unused loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartAPIServer starts etcd (the etcd binary on PATH) and kube-apiserver
// (the given binary) with their state under dir, and waits until the API
// server is ready. Logs go to dir/etcd.log and dir/apiserver.log.
//
// With in set, both run inside that network namespace (a test's "node",
// whose plugin must reach them on its own loopback), and the client's
// connections are opened there too.
func StartAPIServer(dir, apiserverBin string, in InNS) (a *APIServer, err error) {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd not found (Debian package etcd-server): %w", err)
	}
	a = &APIServer{dir: dir, in: in}
	defer func() {
		if err != nil {
			a.Stop()
			a = nil
		}
	}()
	ports := make([]int, 3)
	for i := range ports {
		if err = a.run(func() error {
			var err error
			ports[i], err = freePort()
			return err
		}); err != nil {
			return
		}
	}
	client, peer, secure := ports[0], ports[1], ports[2]
	pki := filepath.Join(dir, "pki")
	if err = os.MkdirAll(pki, 0o700); err != nil {
		return
	}
	if err = writeServiceAccountKeys(pki); err != nil {
		return
	}
	var tok [16]byte
	rand.Read(tok[:])
	a.Token = hex.EncodeToString(tok[:])
	rand.Read(tok[:])
	a.NobodyToken = hex.EncodeToString(tok[:])
	users := a.Token + ",test-admin,test-admin,\"system:masters\"\n" + a.NobodyToken + ",nobody,nobody\n"
	a.NodeTokens = map[string]string{}
	for _, node := range []string{"node-a", "node-b"} {
		rand.Read(tok[:])
		a.NodeTokens[node] = hex.EncodeToString(tok[:])
		users += a.NodeTokens[node] + ",spinneret:node:" + node + ",spinneret:node:" + node + ",spinneret:nodes\n"
	}
	if err = os.WriteFile(filepath.Join(pki, "tokens.csv"), []byte(users), 0o600); err != nil {
		return
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	if err = a.start(etcdBin, "etcd.log", "--name", "test", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test="+peerURL); err != nil {
		return
	}
	a.apiserver = []string{apiserverBin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(secure),
		"--cert-dir", pki,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(pki, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--token-auth-file", filepath.Join(pki, "tokens.csv"),
		"--authorization-mode", "RBAC",
		// as kubeadm and every CNI's DaemonSet need
		"--allow-privileged=true",
		"--endpoint-reconciler-type", "none"}
	if err = a.start(a.apiserver[0], "apiserver.log", a.apiserver[1:]...); err != nil {
		return
	}
	a.URL = "https://127.0.0.1:" + strconv.Itoa(secure)
	a.Kubeconfig = filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: test-admin
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: test-admin}
current-context: test
`, a.URL, a.Token)
	if err = os.WriteFile(a.Kubeconfig, []byte(kc), 0o600); err != nil {
		return
	}
	err = a.waitReady(90 * time.Second)
	return
}

func (a *APIServer) start(bin, log string, args ...string) error {
	f, err := os.Create(filepath.Join(a.dir, log))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if a.in == nil {
		// killed with the test process; not inside a namespace, where the
		// forking thread (whose death is the trigger) is short-lived
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := a.run(cmd.Start); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	f.Close()
	a.procs = append(a.procs, cmd)
	return nil
}

// Client is an HTTP client for the API server (the token and the
// self-signed certificate are handled by Do).
func (a *APIServer) Client() *http.Client { return a.ClientWith(&tls.Config{InsecureSkipVerify: true}) }

// ClientWith is Client with the TLS config given (a CA to verify with).
func (a *APIServer) ClientWith(tc *tls.Config) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := a.run(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DialContext: dial}}
}

// Do sends a request with the admin token.
func (a *APIServer) Do(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", "Bearer "+a.Token)
	return a.Client().Do(req)
}

func (a *APIServer) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		for _, p := range a.procs {
			if p.ProcessState != nil {
				return fmt.Errorf("%s exited; see %s", p.Path, a.dir)
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/readyz", nil)
		if resp, err := a.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s; see %s/apiserver.log", timeout, a.dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop kills the API server and etcd (their process groups) and waits.
func (a *APIServer) Stop() {
	if a == nil {
		return
	}
	for i := len(a.procs) - 1; i >= 0; i-- {
		p := a.procs[i]
		if p.Process == nil {
			continue
		}
		syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		p.Wait()
	}
	a.procs = nil
}

// StopAPIServer kills kube-apiserver only: etcd keeps the cluster's state
// for Restart.
func (a *APIServer) StopAPIServer() {
	for i := len(a.procs) - 1; i >= 0; i-- {
		p := a.procs[i]
		if p.Path == a.apiserver[0] || p.Args[0] == a.apiserver[0] {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			p.Wait()
			a.procs = append(a.procs[:i], a.procs[i+1:]...)
		}
	}
}

// Restart starts kube-apiserver again (after StopAPIServer) on the same
// port and etcd, and waits until it is ready.
func (a *APIServer) Restart() error {
	if err := a.start(a.apiserver[0], "apiserver-restart.log", a.apiserver[1:]...); err != nil {
		return err
	}
	return a.waitReady(90 * time.Second)
}

// writeServiceAccountKeys writes the RSA key pair the API server signs
// service account tokens with.
func writeServiceAccountKeys(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// Version is the Kubernetes version the tests run against.
const Version = "v1.37.2"

// Binary returns the cached kube-apiserver of Version, building it first if
// needed (minutes, once per machine): root is the project's root.
func Binary(root string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "tests", "k8s", "build-apiserver.sh"), Version)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build kube-apiserver %s: %w", Version, err)
	}
	return strings.TrimSpace(string(out)), nil
}
