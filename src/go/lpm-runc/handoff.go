package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The hand-off with the node's agent, in D = <root>/<checkpoint>/<container-name>/:
//
//	D/waiting   written here: {"container_id", "since", "pid"}; the agent may now place the checkpoint
//	D/ready     written by the agent: {"images", "rootfs_diff", "deleted_files", "volumes", "lazy_pages"}
//	<root>/<checkpoint>/abort   written by the agent: a text reason; the create fails with it
//	D/restored  written here once runc restore succeeded; a later create of the same container (a restart)
//	            is a plain create
//	D/lazy-pages.pid  written by lpm-runc's supervisor (post-copy: ready has lazy_pages) when `criu lazy-pages`
//	            started, removed when it exited; it outlives a successful restore and keeps reading the staged
//	            images, which are left to the agent then
//	D/lazy-pages.victim  written here once a post-copy runc restore succeeded: {"pid", "start_time"}, the process
//	            the supervisor kills if the daemon fails (lazy.go)
//	D/lazy-pages.exit  written by the supervisor when the daemon exited: {"code", "time", "killed", "error"}
//	<root>/<checkpoint>/volume-<name>  written here by the first container restored that mounts emptyDir volume
//	            <name>, before it fills it: the pod's later containers find it filled (and running) and leave it
type handoff struct {
	root, checkpoint, container string
}

type readyFile struct {
	Images       string       `json:"images"`
	RootfsDiff   string       `json:"rootfs_diff"`
	DeletedFiles []string     `json:"deleted_files"`
	Volumes      []volumeFile `json:"volumes"`
	LazyPages    *lazyPages   `json:"lazy_pages"` // post-copy: the memory comes from there (lazy.go)
}

// volumeFile is an emptyDir volume's contents at the checkpoint: the container mounts it at Destination.
type volumeFile struct {
	Destination string `json:"destination"`
	Name        string `json:"name"`
	Tar         string `json:"tar"`
}

const pollInterval = 2 * time.Millisecond

func (h handoff) dir() string { return filepath.Join(h.root, h.checkpoint, h.container) }

// failedLog keeps CRIU's log of a failed restore for the agent (runc's work dir is reused by any later try).
const failedLog = "restore-failed.log"

func (h handoff) failed() bool {
	_, err := os.Stat(filepath.Join(h.dir(), "failed"))
	return err == nil
}

// markFailed keeps CRIU's restore.log and records the failure; errors are ignored (the restore already failed
// and runc's own error goes to the shim).
func (h handoff) markFailed(work, containerID string, code int) {
	if data, err := os.ReadFile(filepath.Join(work, "restore.log")); err == nil {
		_ = os.WriteFile(filepath.Join(h.dir(), failedLog), data, 0o600)
	}
	_ = writeJSON(filepath.Join(h.dir(), "failed"), map[string]any{
		"container_id": containerID, "exit_code": code, "time": time.Now().UTC().Format(time.RFC3339Nano),
	})
}

func (h handoff) restored() bool {
	_, err := os.Stat(filepath.Join(h.dir(), "restored"))
	return err == nil
}

// writeJSON writes v to path atomically (temp file in the same directory, fsync, rename).
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeAtomic(path, append(data, '\n'))
}

// writeAtomic writes data to path atomically (temp file in the same directory, fsync, rename).
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// wait announces the container and polls until the agent says ready or abort, or the deadline passes.
func (h handoff) wait(containerID string, seconds float64) (*readyFile, error) {
	d := h.dir()
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, fmt.Errorf("lpm-runc: %w", err)
	}
	waiting := map[string]any{
		"container_id": containerID,
		"since":        time.Now().UTC().Format(time.RFC3339Nano),
		"pid":          os.Getpid(),
	}
	if err := writeJSON(filepath.Join(d, "waiting"), waiting); err != nil {
		return nil, fmt.Errorf("lpm-runc: announcing container %s: %w", containerID, err)
	}
	abortPath := filepath.Join(h.root, h.checkpoint, "abort")
	readyPath := filepath.Join(d, "ready")
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for {
		if reason, err := os.ReadFile(abortPath); err == nil {
			return nil, fmt.Errorf("lpm-runc: migration aborted: %s", strings.TrimSpace(string(reason)))
		}
		if data, err := os.ReadFile(readyPath); err == nil {
			// Written atomically by the agent: what is there is final.
			r, err := parseReady(data)
			if err != nil {
				return nil, fmt.Errorf("lpm-runc: checkpoint %s for container %s: invalid %s: %v",
					h.checkpoint, h.container, readyPath, err)
			}
			return r, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lpm-runc: checkpoint %s for container %s was not ready within %ss",
				h.checkpoint, h.container, formatSeconds(seconds))
		}
		time.Sleep(pollInterval)
	}
}

func formatSeconds(s float64) string { return fmt.Sprintf("%g", s) }

func parseReady(data []byte) (*readyFile, error) {
	var r readyFile
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(r.Images) {
		return nil, fmt.Errorf("images %q is not an absolute path", r.Images)
	}
	if st, err := os.Stat(r.Images); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("images %q is not a directory", r.Images)
	}
	if r.RootfsDiff != "" && !filepath.IsAbs(r.RootfsDiff) {
		return nil, fmt.Errorf("rootfs_diff %q is not an absolute path", r.RootfsDiff)
	}
	if r.LazyPages != nil {
		if err := r.LazyPages.validate(); err != nil {
			return nil, err
		}
	}
	for _, v := range r.Volumes {
		if !validName(v.Name) || !filepath.IsAbs(v.Tar) || !filepath.IsAbs(v.Destination) {
			return nil, fmt.Errorf("volume %+v: want a name and absolute paths", v)
		}
	}
	return &r, nil
}

// dropStaged removes what the agent staged for this container (CRIU's images, the rootfs diff, the volumes'
// contents: process memory, held in memory when the agent staged it under /run/lpm) once it was restored from.
// Only a directory named "staged", as the agent names it; errors are ignored (the agent's release removes what
// is left when the migration ends).
func (h handoff) dropStaged(r *readyFile) {
	dir := filepath.Dir(filepath.Clean(r.Images))
	if filepath.Base(dir) == "staged" {
		_ = os.RemoveAll(dir)
	}
}

func (h handoff) markRestored(containerID string) error {
	return writeJSON(filepath.Join(h.dir(), "restored"), map[string]any{
		"container_id": containerID,
		"time":         time.Now().UTC().Format(time.RFC3339Nano),
	})
}
