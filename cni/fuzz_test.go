package cni

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

// FuzzLoadJournal: any journal file is read or refused, never a panic;
// one that is read saves and reads back to the same journal.
func FuzzLoadJournal(f *testing.F) {
	// the format-0 fixtures of the v0 test, and every journal of testdata
	filepath.WalkDir("../tests/testdata", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".journal") {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
		return nil
	})
	f.Add([]byte(`{"header":{"network":"n","containerID":"c","ifname":"eth0","format":1}}` + "\n" +
		`{"step":{"kind":"ipam.local","op":{"network":"n","containerID":"c","ifname":"eth0"}}}` + "\n" +
		`{"amend":{"index":0,"step":{"kind":"ipam.local","op":{"network":"n","containerID":"c","ifname":"eth0"}}}}` + "\n"))
	// a newer binary's: format 2, a step of a kind this one does not know
	// (read as Foreign, written back as it was), a known one marked "min"
	f.Add([]byte(`{"header":{"network":"n","containerID":"c","ifname":"eth0","format":2,"shard":"b7"}}` + "\n" +
		`{"step":{"kind":"future.x","op":{"a":1},"creates":["host/x"],"on":"pod/link/eth0","held":"k","durable":true}}` + "\n" +
		`{"step":{"kind":"ipam.local","op":{"network":"n","containerID":"c","ifname":"eth0"},"min":2}}` + "\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "x.journal")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := txn.LoadJournal(p)
		if err != nil {
			return
		}
		if err := j.Save(); err != nil {
			return // an op that cannot be encoded again is refused on save
		}
		again, err := txn.LoadJournal(p)
		if err != nil {
			t.Fatalf("a saved journal does not read back: %v", err)
		}
		if len(again.Steps) != len(j.Steps) || again.State != j.State || again.ContainerID != j.ContainerID || !reflect.DeepEqual(again.Result, j.Result) {
			t.Fatalf("read back %d steps, state %v; saved %d, %v", len(again.Steps), again.State, len(j.Steps), j.State)
		}
		for i := range j.Steps {
			if again.Steps[i].Op.Kind() != j.Steps[i].Op.Kind() {
				t.Fatalf("step %d: %s read back as %s", i, j.Steps[i].Op.Kind(), again.Steps[i].Op.Kind())
			}
		}
	})
}
