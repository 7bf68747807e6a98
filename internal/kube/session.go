package kube

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
)

// Each CNI call is a process of its own, so a TLS session cache in memory
// never resumes anything: every call paid a full handshake (the server's
// certificate chain verified, the client's certificate signed). The
// session the API server gives the client is kept in a file instead, and
// the next call resumes it (TLS 1.3 PSK with a fresh ECDHE: the same
// forward secrecy). A missing, damaged or rejected file only costs a full
// handshake again.

// ResumeSessions keeps the client's TLS session in dir, in a file named by
// a hash of the API server, the CA and the client identity the kubeconfig
// gave (another kubeconfig never resumes this one's session). The file is
// written 0600: it lets whoever reads it resume as this client, which the
// kubeconfig's key does too.
func (c *Client) ResumeSessions(dir string) {
	t, ok := c.http.Transport.(*http.Transport)
	if !ok || t.TLSClientConfig == nil || c.identity == "" {
		return
	}
	t.TLSClientConfig.ClientSessionCache = sessionFile{path: filepath.Join(dir, c.identity)}
}

// identity names the TLS identity of a client: what a resumed session is
// bound to.
func identity(server string, ca []byte, insecure bool, cert []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(server), ca, cert} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	if insecure {
		h.Write([]byte{1})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// sessionFile is a tls.ClientSessionCache of one session, in a file:
// the cache key, the ticket and the session state, each length-prefixed.
type sessionFile struct{ path string }

func (s sessionFile) Get(key string) (*tls.ClientSessionState, bool) {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return nil, false
	}
	k, b, ok1 := field(b)
	ticket, state, ok2 := field(b)
	if !ok1 || !ok2 || string(k) != key {
		return nil, false
	}
	st, err := tls.ParseSessionState(state)
	if err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(ticket, st)
	if err != nil {
		return nil, false
	}
	return cs, true
}

func (s sessionFile) Put(key string, cs *tls.ClientSessionState) {
	if cs == nil {
		// the server refused it, or it expired
		os.Remove(s.path)
		return
	}
	ticket, st, err := cs.ResumptionState()
	if err != nil || st == nil {
		return
	}
	state, err := st.Bytes()
	if err != nil {
		return
	}
	var b []byte
	for _, part := range [][]byte{[]byte(key), ticket} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(part)))
		b = append(b, part...)
	}
	b = append(b, state...)
	// whole or not at all: a reader never sees half a file (no fsync: a
	// file lost to a crash costs one full handshake)
	if os.MkdirAll(filepath.Dir(s.path), 0o700) == nil {
		_ = fileutil.WriteAtomicUnsynced(s.path, b)
	}
}

// field splits a length-prefixed field off b.
func field(b []byte) (f, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}
