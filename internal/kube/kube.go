// Package kube is the plugin's own small Kubernetes API client: a
// kubeconfig reader and the few GETs an ADD needs, over net/http. The CNI
// path does not link client-go: its typed clientset registers every API
// type at start-up (a binary that links it started in ~8 ms instead of
// ~2 ms here).
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
)

// Client talks to one API server as the kubeconfig's current user.
type Client struct {
	server  string
	token   string
	http    *http.Client
	timeout time.Duration
	// identity names the server and TLS identity (ResumeSessions)
	identity string
}

type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			Token                 string `yaml:"token"`
			TokenFile             string `yaml:"tokenFile"`
			ClientCertificate     string `yaml:"client-certificate"`
			ClientCertificateData string `yaml:"client-certificate-data"`
			ClientKey             string `yaml:"client-key"`
			ClientKeyData         string `yaml:"client-key-data"`
		} `yaml:"user"`
	} `yaml:"users"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
}

// Load reads a kubeconfig: the current context's cluster (server, CA or
// insecure-skip-tls-verify) and user (token, token file or client
// certificate). Each request is bounded by timeout.
func Load(path string, timeout time.Duration) (*Client, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	base := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	var clusterName, userName string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName = c.Context.Cluster, c.Context.User
		}
	}
	if clusterName == "" {
		return nil, fmt.Errorf("kubeconfig %s: current-context %q not found", path, kc.CurrentContext)
	}
	c := &Client{timeout: timeout}
	tlsConf := &tls.Config{}
	var ca, cert []byte
	found := false
	for _, cl := range kc.Clusters {
		if cl.Name != clusterName {
			continue
		}
		found = true
		c.server = strings.TrimRight(cl.Cluster.Server, "/")
		tlsConf.InsecureSkipVerify = cl.Cluster.InsecureSkipTLSVerify
		ca, err = dataOrFile(cl.Cluster.CertificateAuthorityData, rel(cl.Cluster.CertificateAuthority))
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: cluster %s: certificate authority: %w", path, clusterName, err)
		}
		if ca != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("kubeconfig %s: cluster %s: no certificate in its certificate authority", path, clusterName)
			}
			tlsConf.RootCAs = pool
		}
	}
	if !found || c.server == "" {
		return nil, fmt.Errorf("kubeconfig %s: cluster %q has no server", path, clusterName)
	}
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		c.token = u.User.Token
		if u.User.TokenFile != "" {
			t, err := os.ReadFile(rel(u.User.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("kubeconfig %s: user %s: %w", path, userName, err)
			}
			c.token = strings.TrimSpace(string(t))
		}
		cert, err = dataOrFile(u.User.ClientCertificateData, rel(u.User.ClientCertificate))
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: user %s: client certificate: %w", path, userName, err)
		}
		key, err := dataOrFile(u.User.ClientKeyData, rel(u.User.ClientKey))
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: user %s: client key: %w", path, userName, err)
		}
		if cert != nil && key != nil {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("kubeconfig %s: user %s: %w", path, userName, err)
			}
			tlsConf.Certificates = []tls.Certificate{pair}
		}
	}
	c.http = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, Proxy: nil, ForceAttemptHTTP2: true}}
	c.identity = identity(c.server, ca, tlsConf.InsecureSkipVerify, cert)
	return c, nil
}

func dataOrFile(data, file string) ([]byte, error) {
	if data != "" {
		return base64.StdEncoding.DecodeString(data)
	}
	if file != "" {
		return os.ReadFile(file)
	}
	return nil, nil
}

// StatusError is a non-2xx answer of the API server.
type StatusError struct {
	Code    int
	Message string
	// RetryAfter is the answer's Retry-After (429, 503), 0 if none.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("API server: %d %s", e.Code, e.Message)
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return msg
}

// ErrUnreachable wraps failures to reach the API server (down, timeout).
var ErrUnreachable = errors.New("API server unreachable")

// do sends one request (body, if any, as JSON of contentType) and decodes
// a 2xx answer into out (if any).
func (c *Client) do(ctx context.Context, method, path, contentType string, body, out any) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	Requests.Add(1)
	var read int
	if Trace != nil {
		r := Request{Method: method, Path: path}
		start := time.Now()
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), r.trace()))
		defer func() {
			if se, ok := err.(*StatusError); ok {
				r.Code = se.Code
			} else if err == nil {
				r.Code = http.StatusOK
			}
			r.Took, r.Bytes = time.Since(start), read
			Trace(r)
		}()
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w (%s, timeout %s): %v", ErrUnreachable, c.server, c.timeout, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	read = len(b)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	if len(b) > maxAnswer {
		return fmt.Errorf("%s %s: the answer is larger than %d MiB", method, path, maxAnswer>>20)
	}
	if resp.StatusCode/100 != 2 {
		var st struct{ Message string }
		json.Unmarshal(b, &st)
		se := &StatusError{Code: resp.StatusCode, Message: st.Message}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			se.RetryAfter = time.Duration(s) * time.Second
		}
		return se
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// Pod is what an ADD needs of a pod.
type Pod struct {
	Namespace, Name, UID string
	Annotations          map[string]string
	Labels               map[string]string
	// OwnerKind and OwnerName are the pod's controller (ownerReferences
	// with controller=true), e.g. StatefulSet.
	OwnerKind, OwnerName string
	// Deleting is set once the pod has a deletionTimestamp.
	Deleting bool
}

// Meta is the metadata spinneret reads of any object.
type Meta struct {
	Namespace         string            `json:"namespace,omitempty"`
	Name              string            `json:"name"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	DeletionTimestamp *time.Time        `json:"deletionTimestamp,omitempty"`
	OwnerReferences   []struct {
		Kind       string `json:"kind"`
		Name       string `json:"name"`
		Controller bool   `json:"controller"`
	} `json:"ownerReferences,omitempty"`
}

// GetPod fetches a pod.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*Pod, error) {
	var p struct {
		Metadata Meta `json:"metadata"`
	}
	path := "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
	if err := c.do(ctx, http.MethodGet, path, "", nil, &p); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	m := p.Metadata
	pod := &Pod{Namespace: m.Namespace, Name: m.Name, UID: m.UID, Annotations: m.Annotations, Labels: m.Labels, Deleting: m.DeletionTimestamp != nil}
	for _, o := range m.OwnerReferences {
		if o.Controller {
			pod.OwnerKind, pod.OwnerName = o.Kind, o.Name
		}
	}
	return pod, nil
}

// GetMeta fetches the metadata of a namespace ("/api/v1/namespaces/x") or a
// node ("/api/v1/nodes/x").
func (c *Client) GetMeta(ctx context.Context, path string) (*Meta, error) {
	var o struct {
		Metadata Meta `json:"metadata"`
	}
	if err := c.do(ctx, http.MethodGet, path, "", nil, &o); err != nil {
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	return &o.Metadata, nil
}

// SetPodAnnotation sets one annotation of a pod with one merge patch.
func (c *Client) SetPodAnnotation(ctx context.Context, namespace, name, key, value string) error {
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}}
	path := "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
	if err := c.do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, nil); err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// PodEvent records a Warning event about a pod, as `kubectl describe pod`
// shows them.
func (c *Client) PodEvent(ctx context.Context, pod *Pod, reason, message string) error {
	now := time.Now().UTC().Format(time.RFC3339)
	ev := map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"generateName": pod.Name + ".", "namespace": pod.Namespace},
		"involvedObject": map[string]any{"apiVersion": "v1", "kind": "Pod", "namespace": pod.Namespace, "name": pod.Name, "uid": pod.UID},
		"reason":         reason, "message": message, "type": "Warning", "count": 1,
		"firstTimestamp": now, "lastTimestamp": now,
		"source": map[string]any{"component": "spinneret"},
	}
	if err := c.do(ctx, http.MethodPost, "/api/v1/namespaces/"+url.PathEscape(pod.Namespace)+"/events", "application/json", ev, nil); err != nil {
		return fmt.Errorf("event for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// ErrNotFound is returned (wrapped) for an object that does not exist.
var ErrNotFound = errors.New("not found")

// NAD is what spinneret reads of a NetworkAttachmentDefinition: its
// spec.config and its k8s.v1.cni.cncf.io/resourceName annotation (the
// device plugin resource whose devices, SR-IOV VFs, its pods get).
type NAD struct {
	Config       []byte
	ResourceName string
}

// GetNAD fetches a NetworkAttachmentDefinition.
func (c *Client) GetNAD(ctx context.Context, namespace, name string) (*NAD, error) {
	var nad struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Config string `json:"config"`
		} `json:"spec"`
	}
	path := "/apis/k8s.cni.cncf.io/v1/namespaces/" + url.PathEscape(namespace) + "/network-attachment-definitions/" + url.PathEscape(name)
	if err := c.do(ctx, http.MethodGet, path, "", nil, &nad); err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Code == http.StatusNotFound {
			return nil, fmt.Errorf("NetworkAttachmentDefinition %s/%s: %w", namespace, name, ErrNotFound)
		}
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s/%s: %w", namespace, name, err)
	}
	return &NAD{Config: []byte(nad.Spec.Config), ResourceName: nad.Metadata.Annotations["k8s.v1.cni.cncf.io/resourceName"]}, nil
}

// Requests counts the requests this process sent (for benchmarks).
var Requests atomic.Int64

// Trace, when set, is told of every request when it is answered (the
// plugin's debug log, benchmarks).
var Trace func(Request)

// Request is one request as Trace is told of it.
type Request struct {
	Method, Path string
	// Code is the answer's status: a non-2xx one, or 200 for any 2xx;
	// 0 when there was no answer
	Code int
	Took time.Duration
	// Dial and TLS are the times of a new connection's TCP connect and
	// TLS handshake (0 on a connection reused); Resumed reports a TLS
	// session resumed from the session cache
	Dial, TLS time.Duration
	Resumed   bool
	// Bytes is the answer body's length
	Bytes int
}

// trace records r's connection in r.
func (r *Request) trace() *httptrace.ClientTrace {
	var dial, hs time.Time
	return &httptrace.ClientTrace{
		ConnectStart:      func(string, string) { dial = time.Now() },
		ConnectDone:       func(string, string, error) { r.Dial = time.Since(dial) },
		TLSHandshakeStart: func() { hs = time.Now() },
		TLSHandshakeDone: func(st tls.ConnectionState, _ error) {
			r.TLS, r.Resumed = time.Since(hs), st.DidResume
		},
	}
}

// Get reads the object at path into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, "", nil, out)
}

// maxAnswer bounds what one answer may be.
const maxAnswer = 4 << 20

// listPage is how many objects one request of List asks for (client-go's
// pager uses the same). Pages keep every answer far under the 4 MiB one
// answer may be (a pool's 50,000 IPAllocations are ~50 MB as JSON).
const listPage = 500

// List reads every object of the collection at path, narrowed by a label
// selector ("" for all), as T, a page of listPage at a time (limit and
// continue). An expired continue token (410: the list took longer than
// the API server keeps a snapshot) restarts the list, once.
func List[T any](ctx context.Context, c *Client, path, labelSelector string) ([]T, error) {
	return list[T](ctx, c, path, labelSelector, false)
}

// ListCached is List read from the API server's watch cache
// (resourceVersion=0): maybe a moment behind etcd, but a selective label
// selector costs the server a scan of memory, not of every object in etcd
// (at 10,000 objects in the collection a list by label took 9-11 s from
// etcd under 10 nodes' load, TestKubeIPAMGrowth). For what is a hint.
func ListCached[T any](ctx context.Context, c *Client, path, labelSelector string) ([]T, error) {
	return list[T](ctx, c, path, labelSelector, true)
}

func list[T any](ctx context.Context, c *Client, path, labelSelector string, cached bool) ([]T, error) {
	var out []T
	restarted := false
	cont := ""
	for {
		items, next, err := page[T](ctx, c, path, labelSelector, listPage, cont, cached)
		var se *StatusError
		if errors.As(err, &se) && se.Code == http.StatusGone && cont != "" && !restarted {
			out, cont, restarted = out[:0], "", true
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		cont = next
	}
}

// ListFirstCached reads, from the watch cache (see ListCached), the first
// n objects of the collection at path that the label selector picks, in
// one request: whether there are any, at the cost of n (an API server
// whose cache does not page answers with all of them). whole: the answer
// holds every object the selector picks (no next page).
func ListFirstCached[T any](ctx context.Context, c *Client, path, labelSelector string, n int) (items []T, whole bool, err error) {
	items, next, err := page[T](ctx, c, path, labelSelector, n, "", true)
	return items, next == "", err
}

// page reads one page of a list: up to limit objects from the continue
// token cont on (the first from the watch cache if cached), and the token
// of the next page ("" if none).
func page[T any](ctx context.Context, c *Client, path, labelSelector string, limit int, cont string, cached bool) ([]T, string, error) {
	q := url.Values{}
	if labelSelector != "" {
		q.Set("labelSelector", labelSelector)
	}
	q.Set("limit", strconv.Itoa(limit))
	if cont != "" {
		q.Set("continue", cont) // it carries its own resourceVersion
	} else if cached {
		q.Set("resourceVersion", "0")
	}
	var pg struct {
		Metadata struct {
			Continue string `json:"continue"`
		} `json:"metadata"`
		Items []T `json:"items"`
	}
	if err := c.do(ctx, http.MethodGet, path+"?"+q.Encode(), "", nil, &pg); err != nil {
		return nil, "", err
	}
	return pg.Items, pg.Metadata.Continue, nil
}

// Create posts obj to the collection at path; the created object is
// decoded into out (if any).
func (c *Client) Create(ctx context.Context, path string, obj, out any) error {
	return c.do(ctx, http.MethodPost, path, "application/json", obj, out)
}

// Update replaces the object at path (its metadata.resourceVersion makes
// it a compare-and-swap on that one object).
func (c *Client) Update(ctx context.Context, path string, obj, out any) error {
	return c.do(ctx, http.MethodPut, path, "application/json", obj, out)
}

// MergePatch applies a JSON merge patch to the object at path.
func (c *Client) MergePatch(ctx context.Context, path string, patch, out any) error {
	return c.do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, out)
}

// Delete deletes the object at path if its UID and resourceVersion are
// still those given (either may be empty: not checked).
func (c *Client) Delete(ctx context.Context, path, uid, resourceVersion string) error {
	pre := map[string]string{}
	if uid != "" {
		pre["uid"] = uid
	}
	if resourceVersion != "" {
		pre["resourceVersion"] = resourceVersion
	}
	var body any
	if len(pre) > 0 {
		body = map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": pre}
	}
	return c.do(ctx, http.MethodDelete, path, "application/json", body, nil)
}

// IsStatus reports whether err is an API answer with that HTTP code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}
