package tests

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// untar extracts an archive into dir.
func untar(t *testing.T, r io.Reader, dir string) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, os.FileMode(h.Mode)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestImage: make image builds, without a Docker daemon, an OCI archive
// holding one index named by the tag, of a linux/amd64 and a linux/arm64
// image FROM scratch: one layer each with spinneret, spinneret-controller,
// spinneret-node and loopback, static (no ELF interpreter) and of the
// platform's machine; the amd64 binaries run.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "image.tar")
	const tag = "ghcr.io/spinneret-cni/spinneret:test"
	cmd := exec.Command("make", "-s", "-C", "..", "image", "IMAGE="+tag, "IMAGE_OUT="+out, "IMAGE_DIR="+filepath.Join(dir, "build"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("make image: %v", err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	oci := filepath.Join(dir, "oci")
	untar(t, f, oci)
	f.Close()
	top, err := layout.ImageIndexFromPath(oci)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := top.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["io.containerd.image.name"] != tag {
		t.Fatalf("index.json: %+v, want one index named %s", im.Manifests, tag)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	pm, _ := idx.IndexManifest()
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	seen := map[string]bool{}
	for _, d := range pm.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" || machines[d.Platform.Architecture] == 0 {
			t.Fatalf("platform %+v", d.Platform)
		}
		arch := d.Platform.Architecture
		seen[arch] = true
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, img, arch, machines[arch], filepath.Join(dir, "root-"+arch))
	}
	if !seen["amd64"] || !seen["arm64"] {
		t.Fatalf("platforms %v, want amd64 and arm64", seen)
	}
}

func checkImage(t *testing.T, img v1.Image, arch string, machine elf.Machine, root string) {
	t.Helper()
	layers, _ := img.Layers()
	cf, _ := img.ConfigFile()
	if len(layers) != 1 || cf.Architecture != arch || cf.OS != "linux" {
		t.Fatalf("%s: %d layers, config %s/%s: want one layer (FROM scratch)", arch, len(layers), cf.OS, cf.Architecture)
	}
	untar(t, mutate.Extract(img), root)
	ents, _ := os.ReadDir(root)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "loopback spinneret spinneret-controller spinneret-node" {
		t.Fatalf("%s: the image holds %v", arch, names)
	}
	for _, n := range names {
		ef, err := elf.Open(filepath.Join(root, n))
		if err != nil {
			t.Fatalf("%s/%s: %v", arch, n, err)
		}
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s/%s is dynamically linked", arch, n)
			}
		}
		if ef.Machine != machine {
			t.Errorf("%s/%s is for %v", arch, n, ef.Machine)
		}
		ef.Close()
	}
	if arch != "amd64" {
		return
	}
	out, err := exec.Command(filepath.Join(root, "spinneret"), "version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("CNI versions")) {
		t.Errorf("the image's spinneret version: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(root, "spinneret-node"), "-h").CombinedOutput(); !bytes.Contains(out, []byte("-runtime-endpoint")) {
		t.Errorf("the image's spinneret-node: %v\n%s", err, out)
	}
}
