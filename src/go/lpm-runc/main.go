// lpm-runc is an OCI runtime wrapper around runc for LPM's live pod migration: containerd's runc shim calls
// it through the runtime handler "lpm". Every command goes straight to runc (exec, same argv and env) except
//   - `create` of a container annotated with lpm.my.domain/restore-checkpoint: it waits for the node's agent
//     to hand over the checkpoint (see handoff.go), applies the rootfs diff and runs `runc restore` instead;
//   - `start` of a container restored that way: a no-op (the restored process already runs);
//   - `checkpoint` with a post-copy request beside its image directory: runc runs as a child with CRIU's page
//     server (lazy.go).
//
// See README.md for the hand-off protocol.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	annRestore       = "lpm.my.domain/restore-checkpoint"
	annRestoreOnly   = "lpm.my.domain/restore-containers" // comma-separated; init containers are not listed
	annContainerType = "io.kubernetes.cri.container-type"
	annContainerName = "io.kubernetes.cri.container-name"
	restoredMarker   = "lpm-restored"
)

// validName checks a checkpoint id (and a container name) against ^[a-z0-9][a-z0-9._-]{0,252}$, by hand:
// compiling that regexp costs ~1 ms at every start, pass-through included.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

const namePattern = "^[a-z0-9][a-z0-9._-]{0,252}$"

func runcPath() string {
	if p := os.Getenv("LPM_RUNC_RUNC"); p != "" {
		return p
	}
	return "/usr/sbin/runc"
}

// passThrough replaces this process with the real runc: argv[0] "runc", the same arguments and environment.
func passThrough() {
	argv := make([]string, len(os.Args))
	argv[0] = "runc"
	copy(argv[1:], os.Args[1:])
	err := syscall.Exec(runcPath(), argv, os.Environ())
	fmt.Fprintf(os.Stderr, "lpm-runc: exec %s: %v\n", runcPath(), err)
	os.Exit(127)
}

func main() {
	inv := parseGlobal(os.Args[1:])
	switch inv.cmd {
	case "create":
		os.Exit(create(inv))
	case "checkpoint":
		// Post-copy when the agent asked for it beside the image directory: one stat for every checkpoint.
		if image, _, _ := scanCheckpoint(inv.args); image != "" {
			if _, err := os.Stat(image + lazyRequestSuffix); err == nil {
				os.Exit(lazyCheckpoint(inv, image))
			}
		}
	case superviseCmd: // lpm-runc's own: the post-copy restore's supervisor (lazy.go)
		os.Exit(superviseLazyPages(inv.args))
	case "start":
		if id := startID(inv.args); validStateID(id) {
			// One syscall: the marker exists only for a container this wrapper restored.
			if os.Remove(filepath.Join(inv.root, id, restoredMarker)) == nil {
				os.Exit(0)
			}
		}
	}
	passThrough()
}

// validStateID keeps ids that are a single path element (runc itself allows only [\w+-.]+).
func validStateID(id string) bool {
	return id != "" && id != "." && id != ".." && !strings.ContainsRune(id, '/')
}

type ociConfig struct {
	Root *struct {
		Path string `json:"path"`
	} `json:"root"`
	Annotations map[string]string `json:"annotations"`
	Mounts      []struct {
		Destination string `json:"destination"`
		Source      string `json:"source"`
	} `json:"mounts"`
}

// fillVolume puts an emptyDir volume's checkpointed contents into the replacement's volume (the host directory
// its mount at v.Destination binds), once per pod: the first container restored that mounts it claims it.
func fillVolume(h handoff, cfg *ociConfig, v volumeFile) error {
	source := ""
	for _, m := range cfg.Mounts {
		if filepath.Clean(m.Destination) == filepath.Clean(v.Destination) {
			source = m.Source
		}
	}
	if source == "" || !filepath.IsAbs(source) {
		return fmt.Errorf("the container does not mount it at %s", v.Destination)
	}
	claim, err := os.OpenFile(filepath.Join(h.root, h.checkpoint, "volume-"+v.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil // an earlier container of the pod filled it
	}
	if err != nil {
		return err
	}
	claim.Close()
	return applyTar(source, v.Tar)
}

// create returns the exit code; it does not return when it passes through.
func create(inv invocation) int {
	c, err := parseCreate(inv.args)
	if err != nil {
		passThrough() // runc reports its own usage errors
	}
	raw, err := os.ReadFile(filepath.Join(c.bundle, "config.json"))
	if err != nil || !bytes.Contains(raw, []byte(annRestore)) {
		passThrough() // the common case: no JSON parsing at all
	}
	var cfg ociConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		passThrough()
	}
	ckpt, ok := cfg.Annotations[annRestore]
	if !ok || cfg.Annotations[annContainerType] != "container" {
		passThrough() // e.g. the sandbox (pause) container of a restored pod
	}
	if only, listed := cfg.Annotations[annRestoreOnly]; listed && !listedIn(only, cfg.Annotations[annContainerName]) {
		passThrough() // an init container: it runs as in any new pod
	}
	if err := restore(inv, c, &cfg, ckpt); err != nil {
		var rc *runcFailed
		if errors.As(err, &rc) {
			return rc.code // runc wrote its own error to the log
		}
		reportError(inv, err.Error())
		return 1
	}
	return 0
}

func listedIn(list, name string) bool {
	for _, item := range strings.Split(list, ",") {
		if strings.TrimSpace(item) == name {
			return true
		}
	}
	return false
}

type runcFailed struct{ code int }

func (e *runcFailed) Error() string { return fmt.Sprintf("runc restore exited with %d", e.code) }

func restore(inv invocation, c createArgs, cfg *ociConfig, ckpt string) error {
	if !validName(ckpt) {
		return fmt.Errorf("lpm-runc: invalid %s annotation %q (want %s)", annRestore, ckpt, namePattern)
	}
	name := cfg.Annotations[annContainerName]
	if !validName(name) {
		return fmt.Errorf("lpm-runc: invalid %s annotation %q", annContainerName, name)
	}
	if cfg.Root == nil || cfg.Root.Path == "" {
		return fmt.Errorf("lpm-runc: %s/config.json has no root.path", c.bundle)
	}
	rootfs := cfg.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(c.bundle, rootfs)
	}
	h := handoff{root: handoffRoot(), checkpoint: ckpt, container: name}
	if code, broke := h.pageStreamBroke(); broke {
		// Post-copy: the process was killed with its memory incomplete; a fresh start here would run next to the
		// source the migration's rollback thaws.
		return fmt.Errorf("lpm-runc: the post-copy page stream of checkpoint %s broke after the restore (criu "+
			"lazy-pages exited with %d); the container was killed and is not started again", ckpt, code)
	}
	if h.restored() {
		passThrough() // a restart of a container restored earlier: a fresh create
	}
	if h.failed() {
		// A restore is tried once: CRIU fails the same way again, and a retry would race the rollback.
		return fmt.Errorf("lpm-runc: restoring checkpoint %s failed before; not tried again (CRIU's log: the "+
			"migration's status, or %s)", ckpt, filepath.Join(h.dir(), failedLog))
	}
	wait, err := waitSeconds()
	if err != nil {
		return err
	}
	ready, err := h.wait(c.id, wait)
	if err != nil {
		return err
	}
	if ready.RootfsDiff != "" {
		if err := applyTar(rootfs, ready.RootfsDiff); err != nil {
			return fmt.Errorf("lpm-runc: applying rootfs diff %s: %w", ready.RootfsDiff, err)
		}
	}
	for _, p := range ready.DeletedFiles {
		if err := removeInRoot(rootfs, p); err != nil {
			return fmt.Errorf("lpm-runc: removing deleted file %s: %w", p, err)
		}
	}
	for _, v := range ready.Volumes {
		if err := fillVolume(h, cfg, v); err != nil {
			return fmt.Errorf("lpm-runc: filling emptyDir volume %s: %w", v.Name, err)
		}
	}
	work := filepath.Join(h.dir(), "work")
	if err := os.MkdirAll(work, 0o700); err != nil {
		return fmt.Errorf("lpm-runc: %w", err)
	}
	var daemon *lazyDaemon // post-copy: `criu lazy-pages` serves the memory (lazy.go)
	if ready.LazyPages != nil {
		if daemon, err = startLazyPages(h, ready, work); err != nil {
			return err
		}
	}
	cmd := exec.Command(runcPath(), restoreArgv(inv.global, c, ready.Images, work, daemon != nil)...)
	cmd.Args[0] = "runc"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr // *os.File: the fds go straight through
	if daemon == nil {
		err = cmd.Run()
	} else {
		err = daemon.runRestore(cmd) // on an error the daemon is gone and CRIU's cgroup yard unmounted
	}
	if err != nil {
		var broke *transferBroke
		if errors.As(err, &broke) {
			h.markFailed(work, c.id, 1)
			return fmt.Errorf("lpm-runc: the post-copy page transfer of checkpoint %s broke during the restore "+
				"(criu lazy-pages exited with %d); the replacement was not started", ckpt, broke.code)
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code := ee.ExitCode()
			if code <= 0 {
				code = 1 // killed by a signal
			}
			h.markFailed(work, c.id, code)
			return &runcFailed{code: code}
		}
		return fmt.Errorf("lpm-runc: running %s restore: %w", runcPath(), err)
	}
	if err := h.markRestored(c.id); err != nil {
		return fmt.Errorf("lpm-runc: %w", err)
	}
	if daemon == nil {
		h.dropStaged(ready) // post-copy: the daemon reads the images until the page stream ended; the agent drops them
	} else if err := daemon.arm(c.pidFile); err != nil { // from now on a failed daemon kills the restored process
		return fmt.Errorf("lpm-runc: container %s restored but the post-copy supervisor does not know its "+
			"process: %w", c.id, err)
	}
	if err := os.WriteFile(filepath.Join(inv.root, c.id, restoredMarker), nil, 0o600); err != nil {
		return fmt.Errorf("lpm-runc: container %s restored but its start marker failed: %w", c.id, err)
	}
	return nil
}

func handoffRoot() string {
	if r := os.Getenv("LPM_RUNC_RESTORE_ROOT"); r != "" {
		return r
	}
	return "/var/lib/lpm/restore"
}

func waitSeconds() (float64, error) { return envSeconds("LPM_RUNC_WAIT_SECONDS", 100) }

// envSeconds reads a positive number of seconds from environment variable name, def when it is unset.
func envSeconds(name string, def float64) (float64, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("lpm-runc: invalid %s %q", name, s)
	}
	return v, nil
}

// reportError prints msg on stderr and appends it to runc's --log in runc's format: containerd's shim
// reports the last error line of that log as the reason the task failed.
func reportError(inv invocation, msg string) {
	fmt.Fprintln(os.Stderr, msg)
	if inv.log == "" || inv.log == "/dev/stderr" {
		return
	}
	now := time.Now()
	var line []byte
	if inv.logFormat == "json" {
		line, _ = json.Marshal(map[string]string{"level": "error", "msg": msg, "time": now.Format(time.RFC3339)})
	} else {
		line = []byte(fmt.Sprintf("time=%q level=error msg=%s", now.Format(time.RFC3339), strconv.Quote(msg)))
	}
	f, err := os.OpenFile(inv.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lpm-runc: cannot append to log %s: %v\n", inv.log, err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}
