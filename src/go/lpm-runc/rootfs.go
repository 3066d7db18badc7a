package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Applying the checkpoint's rootfs diff. Entry names must stay inside the rootfs (no absolute names, no
// ".."), and every symlink met on the way is resolved as the container would see it, with the rootfs as "/"
// (like a chroot): a link "etc -> /host/etc" leads to <rootfs>/host/etc, never out of the rootfs.

var errEscape = errors.New("escapes the rootfs")

// cleanRel validates a path inside the rootfs and returns its components ("" is the rootfs itself).
func cleanRel(name string, allowAbs bool) (string, error) {
	if strings.HasPrefix(name, "/") {
		if !allowAbs {
			return "", fmt.Errorf("%q: absolute path %w", name, errEscape)
		}
		name = strings.TrimLeft(name, "/")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", fmt.Errorf("%q: '..' %w", name, errEscape)
		default:
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/"), nil
}

// resolveIn returns the host path of rel inside root, resolving symlinks chroot-style. With followLast
// false the last component is not resolved (the caller creates, replaces or removes it).
func resolveIn(root, rel string, followLast bool) (string, error) {
	queue := strings.Split(rel, "/")
	var done []string
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := filepath.Join(root, filepath.Join(done...), c)
		if len(queue) == 0 && !followLast {
			done = append(done, c)
			break
		}
		st, err := os.Lstat(cur)
		if err != nil || st.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c) // a directory, a file, or not there yet
			continue
		}
		if hops++; hops > 255 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", rel)
		}
		target, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			done = nil
		}
		queue = append(strings.Split(target, "/"), queue...)
	}
	return filepath.Join(root, filepath.Join(done...)), nil
}

// place returns where entry rel goes: its parent resolved (and created), its last component not followed.
func place(root, rel string) (string, error) {
	target, err := resolveParent(root, rel)
	if err != nil {
		return "", err
	}
	return target, os.MkdirAll(filepath.Dir(target), 0o755)
}

// clear removes whatever is at path unless keepDir and it is a directory.
func clear(path string, keepDir bool) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if keepDir && st.IsDir() {
		return nil
	}
	return os.RemoveAll(path)
}

// applyTar applies a plain or gzip-compressed tar (containerd's checkpoints hold a gzip rootfs-diff.tar).
func applyTar(rootfs, tarPath string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		return applyTarReader(rootfs, zr)
	}
	return applyTarReader(rootfs, br)
}

type dirTimes struct {
	path         string
	atime, mtime time.Time
}

func applyTarReader(rootfs string, r io.Reader) error {
	tr := tar.NewReader(r)
	var dirs []dirTimes
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		rel, err := cleanRel(hdr.Name, false)
		if err != nil {
			return fmt.Errorf("entry %w", err)
		}
		if rel == "" {
			continue // the rootfs itself: it belongs to the runtime
		}
		target, err := place(rootfs, rel)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		atime := hdr.AccessTime
		if atime.IsZero() {
			atime = hdr.ModTime
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			st, err := os.Lstat(target)
			if err == nil && st.Mode()&fs.ModeSymlink != 0 {
				continue // e.g. var/run -> /run in the image: keep the link, its children resolve through it
			}
			if err := clear(target, true); err != nil {
				return err
			}
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := setOwnerMode(target, hdr, mode); err != nil {
				return err
			}
			dirs = append(dirs, dirTimes{target, atime, hdr.ModTime})
		case tar.TypeReg, '\x00':
			if err := clear(target, false); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			if err := setOwnerMode(target, hdr, mode); err != nil {
				return err
			}
			if err := os.Chtimes(target, atime, hdr.ModTime); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := clear(target, false); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
			if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
			if err := lutimes(target, atime, hdr.ModTime); err != nil {
				return err
			}
		case tar.TypeLink:
			lrel, err := cleanRel(hdr.Linkname, false)
			if err != nil || lrel == "" {
				return fmt.Errorf("hard link %q -> %q %w", hdr.Name, hdr.Linkname, errEscape)
			}
			src, err := resolveParent(rootfs, lrel)
			if err != nil {
				return err
			}
			if err := clear(target, false); err != nil {
				return err
			}
			if err := os.Link(src, target); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if err := clear(target, false); err != nil {
				return err
			}
			kind := map[byte]uint32{tar.TypeChar: syscall.S_IFCHR, tar.TypeBlock: syscall.S_IFBLK,
				tar.TypeFifo: syscall.S_IFIFO}[hdr.Typeflag]
			if err := syscall.Mknod(target, kind|0o600, mkdev(hdr.Devmajor, hdr.Devminor)); err != nil {
				return err
			}
			if err := setOwnerMode(target, hdr, mode); err != nil {
				return err
			}
			if err := os.Chtimes(target, atime, hdr.ModTime); err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %q: unsupported tar entry type %q", hdr.Name, hdr.Typeflag)
		}
	}
	// Directory times last: creating their entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chtimes(dirs[i].path, dirs[i].atime, dirs[i].mtime); err != nil {
			return err
		}
	}
	return nil
}

// resolveParent is resolveIn without following the last component, for the source of a hard link.
func resolveParent(root, rel string) (string, error) {
	parent, err := resolveIn(root, filepath.Dir(rel), true)
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, filepath.Base(rel)), nil
}

// setOwnerMode chowns first: chown clears the setuid and setgid bits.
func setOwnerMode(path string, hdr *tar.Header, mode fs.FileMode) error {
	if err := os.Lchown(path, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

func mkdev(major, minor int64) int {
	ma, mi := uint64(major), uint64(minor)
	return int((ma&0xfffff000)<<32 | (ma&0xfff)<<8 | (mi&0xffffff00)<<12 | mi&0xff)
}

// lutimes sets the times of a symlink itself (utimensat with AT_SYMLINK_NOFOLLOW; the syscall package has
// no wrapper for it).
func lutimes(path string, atime, mtime time.Time) error {
	p, err := syscall.BytePtrFromString(path)
	if err != nil {
		return err
	}
	ts := [2]syscall.Timespec{syscall.NsecToTimespec(atime.UnixNano()), syscall.NsecToTimespec(mtime.UnixNano())}
	const atFdcwd, atSymlinkNofollow = -100, 0x100
	fd := atFdcwd
	_, _, e := syscall.Syscall6(syscall.SYS_UTIMENSAT, uintptr(fd), uintptr(unsafe.Pointer(p)),
		uintptr(unsafe.Pointer(&ts[0])), atSymlinkNofollow, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// removeInRoot removes a deleted_files entry ("/path/in/rootfs"); its last component is not followed.
func removeInRoot(rootfs, p string) error {
	rel, err := cleanRel(p, true)
	if err != nil {
		return err
	}
	if rel == "" {
		return fmt.Errorf("%q: refusing to remove the rootfs itself", p)
	}
	target, err := resolveParent(rootfs, rel)
	if err != nil {
		return err
	}
	return os.RemoveAll(target)
}
