package logfile

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentAppendAndRotate: writers that each open the log anew for
// every few lines (as plugin processes do), with rotations among them,
// lose no line and tear none; every file is 0600 in a 0700 directory.
func TestConcurrentAppendAndRotate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	path := filepath.Join(dir, "spinneret.log")
	o := Options{MaxBytes: 32 << 10, MaxBackups: 1000}
	const writers, opens, lines = 8, 40, 10
	pad := strings.Repeat("x", 150)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range opens {
				f, err := Open(path, o)
				if err != nil {
					errs <- err
					return
				}
				for l := range lines {
					fmt.Fprintf(f, "w%d o%d l%d %s end\n", w, i, l, pad)
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "spinneret*.log"))
	if len(files) < 5 {
		t.Fatalf("%d files: %v; want several rotations", len(files), files)
	}
	seen := map[string]bool{}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
		if f != path && fi.Size() < o.MaxBytes {
			t.Errorf("%s rotated at %d bytes, before %d", f, fi.Size(), o.MaxBytes)
		}
		r, _ := os.Open(f)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l := sc.Text()
			if !strings.HasSuffix(l, pad+" end") || strings.Count(l, " end") != 1 {
				t.Errorf("%s: torn line %q", f, l)
			}
			if seen[l] {
				t.Errorf("line twice: %q", l)
			}
			seen[l] = true
		}
		r.Close()
	}
	if len(seen) != writers*opens*lines {
		t.Errorf("%d lines in the log and its backups, want %d", len(seen), writers*opens*lines)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("log dir mode %v, want 0700", fi.Mode().Perm())
	}
}

// TestBackupsBounded: lumberjack keeps MaxBackups rotated files; a log
// made 0644 by hand is narrowed to 0600.
func TestBackupsBounded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spinneret.log")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := Options{MaxBytes: 1 << 10, MaxBackups: 2}
	for i := range 10 {
		f, err := Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := f.Stat(); fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
		}
		fmt.Fprintf(f, "%d %s\n", i, strings.Repeat("y", 2000))
		f.Close()
		time.Sleep(2 * time.Millisecond) // lumberjack's backup names are per millisecond
	}
	// lumberjack removes the extra backups in a goroutine of its own
	deadline := time.Now().Add(5 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "spinneret-*.log"))
		if len(files) <= o.MaxBackups {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backups kept, want %d: %v", len(files), o.MaxBackups, files)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
