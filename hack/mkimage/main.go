// Command mkimage builds spinneret's image without a Docker daemon, with
// go-containerregistry: FROM scratch, one layer per platform holding the
// static binaries of that platform's directory at /, and an image index
// of the platforms, written as an OCI image layout in a tar archive
// (`ctr images import`, `skopeo copy oci-archive:`, `crane push` take it).
// The index is named by the tag (annotations io.containerd.image.name and
// org.opencontainers.image.ref.name), so containerd imports it as that
// image. The layers are reproducible: fixed owner, modes and times.
//
// usage: mkimage -o OUT.tar -tag REF -platform linux/amd64=DIR [-platform linux/arm64=DIR ...]
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type platforms []string

func (p *platforms) String() string     { return strings.Join(*p, ",") }
func (p *platforms) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	out := flag.String("o", "", "the OCI archive to write")
	tag := flag.String("tag", "", "the image's reference (registry/repository:tag)")
	version := flag.String("version", "", "org.opencontainers.image.version")
	entrypoint := flag.String("entrypoint", "/spinneret", "the image's entrypoint")
	var plats platforms
	flag.Var(&plats, "platform", "OS/ARCH=DIR: the files of DIR at / for that platform (repeatable)")
	flag.Parse()
	if *out == "" || *tag == "" || len(plats) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := build(*out, *tag, *version, *entrypoint, plats); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func build(out, tag, version, entrypoint string, plats []string) error {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range plats {
		spec, dir, ok := strings.Cut(p, "=")
		osName, arch, ok2 := strings.Cut(spec, "/")
		if !ok || !ok2 {
			return fmt.Errorf("-platform %q: want OS/ARCH=DIR", p)
		}
		img, err := image(osName, arch, dir, version, entrypoint)
		if err != nil {
			return fmt.Errorf("%s: %w", spec, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}}})
	}
	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	lp, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	_, short, _ := strings.Cut(tag[strings.LastIndex(tag, "/")+1:], ":")
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          tag,
		"org.opencontainers.image.ref.name": short,
	})); err != nil {
		return err
	}
	return tarDir(tmp, out)
}

// image is one platform's image: its directory's files in one layer.
func image(osName, arch, dir, version, entrypoint string) (v1.Image, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: n, Mode: 0o755, Size: int64(len(b)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = osName, arch
	cf.Created = v1.Time{Time: time.Unix(0, 0)}
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.source":  "https://github.com/spinneret-cni/spinneret",
		"org.opencontainers.image.version": version,
	}
	return mutate.ConfigFile(img, cf)
}

// tarDir writes dir's tree as a tar archive (the OCI archive format).
func tarDir(dir, out string) error {
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = filepath.ToSlash(rel), time.Unix(0, 0), 0, 0, "", ""
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out + ".tmp")
		return err
	}
	return os.Rename(out+".tmp", out)
}
