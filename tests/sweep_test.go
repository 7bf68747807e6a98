package tests

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/nodeagent"
	"github.com/spinneret-cni/spinneret/request"
)

// criServer is a CRI RuntimeService on a unix socket (the generated
// server of the CRI API, real gRPC) whose ListPodSandbox answers the
// sandboxes the test says the runtime has; every other call is
// unimplemented.
type criServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu  sync.Mutex
	ids []string
	// version and status are what Version and a verbose Status say
	version *runtimeapi.VersionResponse
	status  map[string]string
}

func (s *criServer) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version == nil {
		return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "1.6.20", RuntimeApiVersion: "v1"}, nil
	}
	return s.version, nil
}

func (s *criServer) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{}, Info: s.status}, nil
}

func (s *criServer) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, id := range s.ids {
		resp.Items = append(resp.Items, &runtimeapi.PodSandbox{Id: id, State: runtimeapi.PodSandboxState_SANDBOX_READY})
	}
	return resp, nil
}

func (s *criServer) set(ids ...string) {
	s.mu.Lock()
	s.ids = ids
	s.mu.Unlock()
}

// startCRI serves a criServer at a socket in dir.
func startCRI(t *testing.T, dir string) (*criServer, string) {
	t.Helper()
	sock := filepath.Join(dir, "cri.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	c := &criServer{}
	runtimeapi.RegisterRuntimeServiceServer(srv, c)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return c, "unix://" + sock
}

// age makes an attachment's journal and address record look changed d ago.
func (e *env) age(network, id string, d time.Duration) {
	e.t.Helper()
	old := time.Now().Add(-d)
	files, _ := filepath.Glob(filepath.Join(statedir.IPAM(e.stateDir()), "owners", id+":eth0.json"))
	for _, f := range append(files, txn.JournalPath(e.stateDir(), network, id, "eth0")) {
		if err := os.Chtimes(f, old, old); err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestNodeSweep: the node agent's sweep asks the runtime (the CRI, over
// gRPC) for its sandboxes and runs spinneret's GC for the attachments
// whose sandbox it no longer has: such a pod's three NICs, addresses,
// host routes and journal go, and node and pod are as before it was
// added. A live sandbox's attachment stays; so does one without a sandbox
// that changed less than MinAge ago (its ADD may just have returned), and
// one whose lock an ADD holds (the next sweep takes it). With the runtime
// unreachable nothing is removed.
func TestNodeSweep(t *testing.T) {
	e := multiEnv(t)
	e.forwarding()
	l := e.multiConf(dual, "")
	conflist := filepath.Join(e.dir, "00-spinneret.conflist")
	if err := os.WriteFile(conflist, l.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	cri, endpoint := startCRI(t, e.dir)
	ann := map[string]string{request.AnnotNetworks: "blue,green"}
	pods := map[string]*netlab.NS{}
	before := map[string]string{}
	for _, id := range []string{"live", "gone", "young", "busy"} {
		p, err := e.topo.NewPod()
		if err != nil {
			t.Fatal(err)
		}
		pods[id], before[id] = p, e.snapshot(p)
	}
	for _, id := range []string{"live", "gone", "young", "busy"} {
		e.mustAdd(l, podRT(id, pods[id], ann))
	}
	e.age("multi", "live", time.Hour)
	e.age("multi", "gone", time.Hour)
	e.age("multi", "busy", time.Hour)
	cri.set("live")
	sw := &nodeagent.Sweeper{Conflist: conflist, BinDirs: []string{binDir}, CacheDir: filepath.Join(e.dir, "agent-cache"),
		MinAge: 2 * time.Minute, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	sweep := func() (*nodeagent.Report, error) {
		var rep *nodeagent.Report
		err := e.topo.Node.Do(func() error {
			var err error
			rep, err = sw.Sweep(e.ctx)
			return err
		})
		return rep, err
	}

	// the runtime does not answer: no sweep
	sw.Sandboxes = nodeagent.CRISandboxes("unix://"+filepath.Join(e.dir, "nobody.sock"), 2*time.Second)
	if rep, err := sweep(); err == nil || rep != nil {
		t.Fatalf("sweep with the runtime unreachable: %v, %v", rep, err)
	}
	journals := func() []string {
		js, _ := txn.ListJournals(e.stateDir(), "multi")
		var ids []string
		for _, j := range js {
			ids = append(ids, j.ContainerID)
		}
		return ids
	}
	if got := journals(); len(got) != 4 {
		t.Fatalf("journals after a sweep that could not ask the runtime: %v", got)
	}

	sw.Sandboxes = nodeagent.CRISandboxes(endpoint, 5*time.Second)
	lk, err := fileutil.TryLockFile(statedir.AttachmentLock(e.stateDir(), txn.Key("busy", "eth0")))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sweep()
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if rep.Sandboxes != 1 || len(rep.Stale) != 2 || len(rep.Left) != 1 || rep.Left[0].ContainerID != "busy" {
		t.Fatalf("sweep report %+v: want 1 sandbox, stale gone and busy, busy left", rep)
	}
	if got := journals(); len(got) != 3 {
		t.Fatalf("journals after the sweep: %v, want live, young, busy", got)
	}
	lk.Unlock()
	// the second by the binary the DaemonSet runs (spinneret-node sweep)
	var out []byte
	err = e.topo.Node.Do(func() error {
		var err error
		out, err = exec.Command(filepath.Join(binDir, "spinneret-node"), "sweep", "--conflist", conflist, "--runtime-endpoint", endpoint,
			"--cni-path", binDir, "--cni-cache-dir", filepath.Join(e.dir, "agent-cache")).Output()
		return err
	})
	rep = &nodeagent.Report{}
	if jerr := json.Unmarshal(out, rep); err != nil || jerr != nil || len(rep.Stale) != 1 || len(rep.Left) != 0 {
		t.Fatalf("second sweep (spinneret-node sweep): %s, %v: want busy swept", out, err)
	}
	// never DEL'd, the swept pods are as before they were added (and the
	// node too, once live's and young's DELs ran)
	e.mustDel(l, podRT("live", pods["live"], ann))
	e.mustDel(l, podRT("young", pods["young"], ann))
	for _, id := range []string{"live", "gone", "young", "busy"} {
		sameLearnt(t, before[id], e.snapshot(pods[id]))
	}
}
