package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
}

func makeTar(t *testing.T, entries []entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			ModTime: mtime, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyTar(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc", "old"), []byte("old"), 0o644)
	os.Symlink("/etc", filepath.Join(root, "etclink"))
	buf := makeTar(t, []entry{
		{name: "./", typ: tar.TypeDir, mode: 0o700},
		{name: "data/", typ: tar.TypeDir, mode: 0o750, uid: 12, gid: 34},
		{name: "data/counter", typ: tar.TypeReg, body: "42\n", mode: 0o640, uid: 1000, gid: 1001},
		{name: "data/suid", typ: tar.TypeReg, body: "x", mode: 0o4755, uid: 5, gid: 5},
		{name: "data/link", typ: tar.TypeSymlink, link: "counter", uid: 7, gid: 8},
		{name: "data/hard", typ: tar.TypeLink, link: "data/counter"},
		{name: "deep/er/file", typ: tar.TypeReg, body: "no parent entries", mode: 0o600},
		{name: "etc/old", typ: tar.TypeReg, body: "new", mode: 0o644},
		{name: "etclink/viaabs", typ: tar.TypeReg, body: "through an in-rootfs link", mode: 0o644},
		{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
	})
	if err := applyTarReader(root, buf); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "data/counter")); got != "42\n" {
		t.Errorf("counter = %q", got)
	}
	st, _ := os.Stat(filepath.Join(root, "data/counter"))
	if st.Mode().Perm() != 0o640 || !st.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("counter mode %v mtime %v", st.Mode(), st.ModTime())
	}
	if uid, gid := owner(st); uid != 1000 || gid != 1001 {
		t.Errorf("counter owner %d:%d", uid, gid)
	}
	st, _ = os.Stat(filepath.Join(root, "data/suid"))
	if st.Mode()&os.ModeSetuid == 0 {
		t.Errorf("setuid lost after chown: %v", st.Mode())
	}
	st, _ = os.Stat(filepath.Join(root, "data"))
	if !st.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) || st.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v mtime %v", st.Mode(), st.ModTime())
	}
	if l, _ := os.Readlink(filepath.Join(root, "data/link")); l != "counter" {
		t.Errorf("link -> %q", l)
	}
	lst, _ := os.Lstat(filepath.Join(root, "data/link"))
	if uid, gid := owner(lst); uid != 7 || gid != 8 || !lst.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("symlink owner %d:%d mtime %v", uid, gid, lst.ModTime())
	}
	a, _ := os.Stat(filepath.Join(root, "data/hard"))
	b, _ := os.Stat(filepath.Join(root, "data/counter"))
	if !os.SameFile(a, b) {
		t.Errorf("hard link is not the same file")
	}
	if got := readFile(t, filepath.Join(root, "deep/er/file")); got != "no parent entries" {
		t.Errorf("deep = %q", got)
	}
	if got := readFile(t, filepath.Join(root, "etc/old")); got != "new" {
		t.Errorf("etc/old = %q", got)
	}
	// etclink -> /etc resolves to <root>/etc, not the host's /etc
	if got := readFile(t, filepath.Join(root, "etc/viaabs")); got != "through an in-rootfs link" {
		t.Errorf("etc/viaabs = %q", got)
	}
	if st, err := os.Lstat(filepath.Join(root, "fifo")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v %v", st, err)
	}
}

func TestApplyTarEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]entry{
		"absolute":       {{name: filepath.Join(outside, "pwned"), typ: tar.TypeReg, body: "x", mode: 0o644}},
		"dotdot":         {{name: "a/../../pwned", typ: tar.TypeReg, body: "x", mode: 0o644}},
		"hardlink-out":   {{name: "h", typ: tar.TypeLink, link: "../" + filepath.Base(outside) + "/secret"}},
		"hardlink-abs":   {{name: "h", typ: tar.TypeLink, link: filepath.Join(outside, "secret")}},
		"symlink-parent": {{name: "up", typ: tar.TypeSymlink, link: "../../../../../../.."}, {name: "up/" + outside[1:] + "/pwned", typ: tar.TypeReg, body: "x", mode: 0o644}},
		"symlink-abs":    {{name: "out", typ: tar.TypeSymlink, link: outside}, {name: "out/pwned", typ: tar.TypeReg, body: "x", mode: 0o644}},
		"symlink-last":   {{name: "s", typ: tar.TypeSymlink, link: filepath.Join(outside, "secret")}, {name: "s", typ: tar.TypeReg, body: "x", mode: 0o644}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			root := t.TempDir()
			err := applyTarReader(root, makeTar(t, entries))
			if name == "absolute" || name == "dotdot" || name == "hardlink-out" || name == "hardlink-abs" {
				if !errors.Is(err, errEscape) {
					t.Errorf("want an escape error, got %v", err)
				}
			} else if err != nil {
				t.Errorf("symlinks resolve inside the rootfs, got %v", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "pwned")); err == nil {
				t.Fatalf("wrote outside the rootfs")
			}
			if got := readFile(t, filepath.Join(outside, "secret")); got != "secret" {
				t.Fatalf("outside file changed: %q", got)
			}
			if name == "symlink-abs" || name == "symlink-parent" {
				// the write landed where the container sees the link pointing: inside the rootfs
				if got := readFile(t, filepath.Join(root, outside, "pwned")); got != "x" {
					t.Errorf("in-rootfs target = %q", got)
				}
			}
		})
	}
}

func TestRemoveInRoot(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("k"), 0o600)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "var/cache/x"), 0o755)
	os.WriteFile(filepath.Join(root, "var/cache/x/f"), []byte("f"), 0o600)
	os.WriteFile(filepath.Join(root, "gone"), []byte("g"), 0o600)
	os.Symlink(outside, filepath.Join(root, "link"))
	os.Symlink(filepath.Join(outside, "keep"), filepath.Join(root, "filelink"))
	for _, p := range []string{"/gone", "/var/cache/x", "/filelink", "/link/keep", "/never-existed"} {
		if err := removeInRoot(root, p); err != nil {
			t.Errorf("removeInRoot(%q): %v", p, err)
		}
	}
	for _, p := range []string{"gone", "var/cache/x", "filelink"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s still there", p)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("removal followed a symlink out of the rootfs: %v", err)
	}
	for _, p := range []string{"/", "", "/../x", "/a/../../x"} {
		if err := removeInRoot(root, p); err == nil {
			t.Errorf("removeInRoot(%q) accepted", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var")); err != nil {
		t.Errorf("rootfs damaged: %v", err)
	}
}

// containerd writes the checkpoint's rootfs-diff.tar gzip-compressed; a plain tar works as well.
func TestApplyTarFileGzipOrPlain(t *testing.T) {
	for _, gz := range []bool{true, false} {
		root, dir := t.TempDir(), t.TempDir()
		data := makeTar(t, []entry{{name: "etc/hostname-note", typ: tar.TypeReg, body: "moved", mode: 0o644}}).Bytes()
		if gz {
			var zbuf bytes.Buffer
			zw := gzip.NewWriter(&zbuf)
			zw.Write(data)
			zw.Close()
			data = zbuf.Bytes()
		}
		path := filepath.Join(dir, "rootfs-diff.tar")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := applyTar(root, path); err != nil {
			t.Fatalf("gzip=%v: %v", gz, err)
		}
		if got := readFile(t, filepath.Join(root, "etc", "hostname-note")); got != "moved" {
			t.Fatalf("gzip=%v: got %q", gz, got)
		}
	}
}
