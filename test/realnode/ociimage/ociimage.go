// Package ociimage writes container images without a registry or a container engine: layer
// tars built from a directory tree or from a list of files, and the image itself as an OCI
// image layout packed in one tar (oci-layout, index.json, blobs/sha256/...), the form
// `ctr -n k8s.io images import FILE` takes. `make image` (test/realnode/cmd/mkimage) uses it to
// build the images the real-kubelet bench imports.
//
// Layers are uncompressed (application/vnd.oci.image.layer.v1.tar), so a layer's blob digest
// is also its diff ID. Output is reproducible: entries are sorted by name, and a layer built
// from a list of files, the configuration and the archive itself carry fixed owners and times.
package ociimage

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Media types of what an archive holds.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Annotations on the index entry: the full reference containerd names the image after, and
// the tag (OCI's ref.name).
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// Descriptor points at a blob.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Layer is an uncompressed layer tar on disk.
type Layer struct {
	Path    string
	Digest  string // "sha256:<hex>", also the diff ID
	Size    int64
	Comment string // the history entry's created_by
}

// Config is the part of the image configuration that a container's process comes from.
type Config struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

// Image is what WriteArchive writes.
type Image struct {
	Ref     string // full reference, e.g. localhost/svcproxy:dev
	Config  Config
	Layers  []Layer // bottom first
	Created time.Time
	// Architecture defaults to runtime.GOARCH, OS to linux.
	Architecture, OS string
}

// Manifest and index documents (only the fields written).
type (
	manifest struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        Descriptor   `json:"config"`
		Layers        []Descriptor `json:"layers"`
	}
	index struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []Descriptor `json:"manifests"`
	}
	imageConfig struct {
		Created      string    `json:"created"`
		Architecture string    `json:"architecture"`
		OS           string    `json:"os"`
		Config       Config    `json:"config"`
		RootFS       rootFS    `json:"rootfs"`
		History      []history `json:"history"`
	}
	rootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	history struct {
		Created   string `json:"created"`
		CreatedBy string `json:"created_by,omitempty"`
	}
)

// Tag returns the tag of ref (what follows the last ':' after the last '/'), or "latest".
func Tag(ref string) string {
	name := ref[strings.LastIndex(ref, "/")+1:]
	if i := strings.LastIndex(name, ":"); i >= 0 {
		return name[i+1:]
	}
	return "latest"
}

// LayerFromFile returns the Layer of an existing layer tar. It fails when path cannot be read.
func LayerFromFile(path, comment string) (Layer, error) {
	f, err := os.Open(path)
	if err != nil {
		return Layer{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Layer{}, fmt.Errorf("reading layer %s: %w", path, err)
	}
	return Layer{Path: path, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: n, Comment: comment}, nil
}

// WriteArchive writes img as an OCI image layout in one tar at path (through a temporary file
// renamed at the end, so path is never half-written) and returns the manifest's descriptor,
// as index.json lists it. It fails when a layer cannot be read or path cannot be written.
func WriteArchive(path string, img Image) (Descriptor, error) {
	if img.Ref == "" {
		return Descriptor{}, fmt.Errorf("image without a reference")
	}
	arch, osName := img.Architecture, img.OS
	if arch == "" {
		arch = runtime.GOARCH
	}
	if osName == "" {
		osName = "linux"
	}
	created := img.Created.UTC().Format(time.RFC3339)
	cfg := imageConfig{Created: created, Architecture: arch, OS: osName, Config: img.Config,
		RootFS: rootFS{Type: "layers", DiffIDs: []string{}}}
	m := manifest{SchemaVersion: 2, MediaType: MediaTypeManifest, Layers: []Descriptor{}}
	for _, l := range img.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.Digest)
		cfg.History = append(cfg.History, history{Created: created, CreatedBy: l.Comment})
		m.Layers = append(m.Layers, Descriptor{MediaType: MediaTypeLayer, Digest: l.Digest, Size: l.Size})
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Descriptor{}, err
	}
	m.Config = descriptorOf(MediaTypeConfig, cfgJSON)
	manJSON, err := json.Marshal(m)
	if err != nil {
		return Descriptor{}, err
	}
	manDesc := descriptorOf(MediaTypeManifest, manJSON)
	manDesc.Annotations = map[string]string{AnnotationImageName: img.Ref, AnnotationRefName: Tag(img.Ref)}
	idxJSON, err := json.Marshal(index{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []Descriptor{manDesc}})
	if err != nil {
		return Descriptor{}, err
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return Descriptor{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	tw := tar.NewWriter(tmp)
	for _, e := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", idxJSON},
		{"blobs/", nil},
		{"blobs/sha256/", nil},
		{blobName(m.Config.Digest), cfgJSON},
		{blobName(manDesc.Digest), manJSON},
	} {
		if err := writeEntry(tw, e.name, e.data); err != nil {
			return Descriptor{}, err
		}
	}
	written := map[string]bool{}
	for _, l := range img.Layers {
		if written[l.Digest] {
			continue
		}
		written[l.Digest] = true
		if err := copyLayer(tw, l); err != nil {
			return Descriptor{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Descriptor{}, err
	}
	if err := tmp.Close(); err != nil {
		return Descriptor{}, err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return Descriptor{}, err
	}
	return manDesc, os.Rename(tmp.Name(), path)
}

func descriptorOf(mediaType string, data []byte) Descriptor {
	sum := sha256.Sum256(data)
	return Descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

func blobName(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// copyLayer copies a layer's tar into the archive, checking that it still is what l says.
func copyLayer(tw *tar.Writer, l Layer) error {
	f, err := os.Open(l.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(fileHeader(blobName(l.Digest), l.Size)); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(f, l.Size))
	if err != nil {
		return fmt.Errorf("copying layer %s: %w", l.Path, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != l.Size || got != l.Digest {
		return fmt.Errorf("layer %s changed: %d bytes %s, want %d bytes %s", l.Path, n, got, l.Size, l.Digest)
	}
	return nil
}

func fileHeader(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: time.Unix(0, 0)}
}

// writeEntry writes a file of the archive, or a directory when name ends in '/'.
func writeEntry(tw *tar.Writer, name string, data []byte) error {
	if strings.HasSuffix(name, "/") {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: time.Unix(0, 0)})
	}
	if err := tw.WriteHeader(fileHeader(name, int64(len(data)))); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
