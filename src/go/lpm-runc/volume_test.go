package main

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFillVolumeOncePerPodIntoTheMountsSource(t *testing.T) {
	dir := t.TempDir()
	h := handoff{root: filepath.Join(dir, "handoff"), checkpoint: "ck-1", container: "app"}
	must(t, os.MkdirAll(filepath.Join(h.root, h.checkpoint), 0o700))
	vol := filepath.Join(dir, "pods", "uid", "volumes", "kubernetes.io~empty-dir", "data")
	must(t, os.MkdirAll(vol, 0o755))
	cfg := &ociConfig{}
	cfg.Mounts = append(cfg.Mounts, struct {
		Destination string `json:"destination"`
		Source      string `json:"source"`
	}{"/data", vol})
	first := filepath.Join(dir, "data.tar")
	must(t, os.WriteFile(first, makeTar(t, []entry{{name: "events.log", typ: tar.TypeReg, body: "1\n2\n", mode: 0o644}}).Bytes(), 0o600))
	must(t, fillVolume(h, cfg, volumeFile{Destination: "/data/", Name: "data", Tar: first}))
	if got := readFile(t, filepath.Join(vol, "events.log")); got != "1\n2\n" {
		t.Fatalf("volume not filled: %q", got)
	}
	// The pod's next container mounting the same volume: it runs restored already, so it is left alone.
	must(t, os.WriteFile(filepath.Join(vol, "events.log"), []byte("1\n2\n3\n"), 0o644))
	h.container = "sidecar"
	must(t, fillVolume(h, cfg, volumeFile{Destination: "/data", Name: "data", Tar: first}))
	if got := readFile(t, filepath.Join(vol, "events.log")); got != "1\n2\n3\n" {
		t.Fatalf("a second container overwrote the volume: %q", got)
	}
	err := fillVolume(h, cfg, volumeFile{Destination: "/cache", Name: "cache", Tar: first})
	if err == nil || !strings.Contains(err.Error(), "does not mount it at /cache") {
		t.Fatalf("a volume the container does not mount: %v", err)
	}
	// A tar entry that leaves the volume is refused (applyTar is rooted).
	evil := filepath.Join(dir, "evil.tar")
	must(t, os.WriteFile(evil, makeTar(t, []entry{{name: "../../escape", typ: tar.TypeReg, body: "x", mode: 0o644}}).Bytes(), 0o600))
	cfg.Mounts[0].Destination = "/other"
	if err := fillVolume(h, cfg, volumeFile{Destination: "/other", Name: "other", Tar: evil}); err == nil {
		t.Fatalf("an escaping entry was applied")
	}
}
