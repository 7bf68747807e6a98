package cni

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spinneret-cni/spinneret/conf"
)

// TestLogFileMode: the log file is root's alone, 0600 in a 0700 directory
// it creates; one left 0644 by an earlier version is narrowed.
func TestLogFileMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	log := filepath.Join(dir, "spinneret.log")
	for i := 0; i < 2; i++ {
		_, closeFn := newLogger(&conf.Node{LogFile: log, LogLevel: "info"})
		closeFn()
		for _, c := range []struct {
			path string
			want os.FileMode
		}{{dir, 0o700}, {log, 0o600}} {
			fi, err := os.Stat(c.path)
			if err != nil || fi.Mode().Perm() != c.want {
				t.Fatalf("%s: %v %v, want %v", c.path, fi.Mode().Perm(), err, c.want)
			}
		}
		os.Chmod(log, 0o644)
	}
}
