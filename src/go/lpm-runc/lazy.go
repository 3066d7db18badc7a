package main

// Post-copy (CRIU lazy pages). See README.md, "Post-copy (lazy pages)".
//
// Source: `checkpoint` with IMG.lpm-lazy.json beside its image directory runs runc as a child with
// `--lazy-pages --page-server <addr> --status-fd 3`, and writes IMG.lpm-lazy-ready once CRIU's page server listens.
// Target: a `ready` with lazy_pages starts `criu lazy-pages` before `runc restore --lazy-pages`, and watches it
// until runc restore returned.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	lazyRequestSuffix = ".lpm-lazy.json"  // IMG + this: written by the agent; the checkpoint turns lazy
	lazyReadySuffix   = ".lpm-lazy-ready" // IMG + this: written here once the page server listens
	lazyPagesPID      = "lazy-pages.pid"  // D/lazy-pages.pid: the restore's `criu lazy-pages` daemon
	lazyPagesSocket   = "lazy-pages.socket"
	lazyPagesLog      = "lazy-pages.log"
	cgroupYardPrefix  = ".criu.cgyard."
	logTailBytes      = 2048
)

// lazyPages is ready.lazy_pages: where `criu lazy-pages` connects for the pages (the agent's relay).
type lazyPages struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
}

func (l *lazyPages) validate() error {
	if l.Address == "" || strings.ContainsAny(l.Address, " \t\n") {
		return fmt.Errorf("lazy_pages.address %q is not a host", l.Address)
	}
	if l.Port < 1 || l.Port > 65535 {
		return fmt.Errorf("lazy_pages.port %d is not in 1..65535", l.Port)
	}
	return nil
}

// ---- Source: checkpoint ----

type lazyRequest struct {
	PageServer string `json:"page_server"`
}

// lazyCheckpoint runs `runc checkpoint` with CRIU's page server and returns lpm-runc's exit code: runc's, 1 when
// runc died of a signal or the request is invalid (runc is not run then).
func lazyCheckpoint(inv invocation, image string) int {
	reqPath := image + lazyRequestSuffix
	var req lazyRequest
	data, err := os.ReadFile(reqPath)
	if err == nil {
		err = json.Unmarshal(data, &req)
	}
	if err == nil {
		err = validHostPort(req.PageServer)
	}
	var args []string
	if err == nil {
		args, err = lazyCheckpointArgs(inv.args, req.PageServer)
	}
	if err != nil {
		reportError(inv, fmt.Sprintf("lpm-runc: invalid post-copy request %s: %v", reqPath, err))
		return 1
	}
	r, w, err := os.Pipe()
	if err != nil {
		reportError(inv, fmt.Sprintf("lpm-runc: post-copy checkpoint: %v", err))
		return 1
	}
	defer r.Close()
	argv := append(append(append([]string{}, inv.global...), "checkpoint"), args...)
	cmd := exec.Command(runcPath(), argv...)
	cmd.Args[0] = "runc"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w} // fd 3: CRIU's status fd
	// Killed with lpm-runc, as the exec'ed runc would be (containerd kills the runtime it ran on a timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		w.Close()
		reportError(inv, fmt.Sprintf("lpm-runc: exec %s: %v", runcPath(), err))
		return 127
	}
	w.Close() // runc and CRIU hold the write end: EOF once they are gone
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	status := make(chan bool, 1)
	go func() { status <- readStatus(r) }()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := func() {
		err := writeJSON(image+lazyReadySuffix, map[string]any{
			"time": time.Now().UTC().Format(time.RFC3339Nano), "pid": cmd.Process.Pid,
		})
		if err != nil {
			reportError(inv, fmt.Sprintf("lpm-runc: CRIU's page server listens but %s%s failed: %v", image,
				lazyReadySuffix, err))
		}
	}
	var werr error
	select {
	case listening := <-status:
		if listening {
			ready()
		}
		werr = <-exited
	case werr = <-exited:
		// A \0 written just before runc exited is still in the pipe; a process runc left behind holding the
		// write end must not keep us.
		_ = r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if <-status {
			ready()
		}
	}
	signal.Stop(sigs)
	return exitCode(werr)
}

// readStatus reads CRIU's status fd: true at the first \0 (its page server listens), false at EOF or an error.
func readStatus(r *os.File) bool {
	var buf [64]byte
	for {
		n, err := r.Read(buf[:])
		if bytes.IndexByte(buf[:n], 0) >= 0 {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return ee.ExitCode()
	}
	return 1 // a signal
}

// ---- Target: create -> restore ----

func criuPath() string {
	if p := os.Getenv("LPM_RUNC_CRIU"); p != "" {
		return p
	}
	return "criu" // PATH, as runc finds it
}

func lazyReadySeconds() (float64, error) {
	s := os.Getenv("LPM_RUNC_LAZY_READY_SECONDS")
	if s == "" {
		return 10, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("lpm-runc: invalid LPM_RUNC_LAZY_READY_SECONDS %q", s)
	}
	return v, nil
}

// lazyDaemon is the restore's `criu lazy-pages`: it serves the restored process's page faults and pulls the rest
// of its memory from the agent's relay. It outlives lpm-runc when the restore succeeded.
type lazyDaemon struct {
	cmd     *exec.Cmd
	pidFile string
	work    string
	exited  chan struct{} // closed once it was reaped; status is set then
	status  int           // its exit code, 128+signal when killed
}

// startLazyPages starts the daemon and waits until its socket exists. On failure the daemon is gone.
func startLazyPages(h handoff, r *readyFile, work string) (*lazyDaemon, error) {
	secs, err := lazyReadySeconds()
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(work, lazyPagesSocket)
	_ = os.Remove(socket) // a stale one would read as ready
	cmd := exec.Command(criuPath(), "lazy-pages", "--page-server", "--address", r.LazyPages.Address,
		"--port", strconv.Itoa(r.LazyPages.Port), "--images-dir", r.Images, "--work-dir", work,
		"-o", lazyPagesLog, "-v4")
	// stdin/stdout/stderr: /dev/null (nil), never the shim's pipes it would hold open; its own session: it
	// outlives this process and no signal for the shim's group reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lpm-runc: starting %s lazy-pages: %w", criuPath(), err)
	}
	d := &lazyDaemon{cmd: cmd, pidFile: filepath.Join(h.dir(), lazyPagesPID), work: work, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		d.status = exitStatus(cmd.ProcessState)
		close(d.exited)
	}()
	if err := writeAtomic(d.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n")); err != nil {
		d.stop()
		return nil, fmt.Errorf("lpm-runc: recording the lazy-pages daemon: %w", err)
	}
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for {
		if _, err := os.Stat(socket); err == nil {
			return d, nil
		}
		select {
		case <-d.exited:
			d.stop()
			return nil, fmt.Errorf("lpm-runc: criu lazy-pages exited before it was ready (exit %d); its log: %s",
				d.status, logTail(filepath.Join(work, lazyPagesLog)))
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("lpm-runc: criu lazy-pages was not ready within %ss (killed); its log: %s",
				formatSeconds(secs), logTail(filepath.Join(work, lazyPagesLog)))
		}
	}
}

func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// transferBroke: the daemon exited with an error while runc restore ran.
type transferBroke struct{ code int }

func (e *transferBroke) Error() string { return fmt.Sprintf("criu lazy-pages exited with %d", e.code) }

// runRestore runs runc restore (cmd) in its own process group and watches the daemon meanwhile. If the daemon
// fails first, runc restore would hang (until its criu gets SIGKILL): the whole group is killed and the error is
// a *transferBroke. A daemon that exits 0 got every page: runc restore is left to finish. Any error leaves the
// daemon killed and CRIU's cgroup yard unmounted.
func (d *lazyDaemon) runRestore(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := d.watch(cmd)
	if err != nil {
		d.stop()
	}
	return err
}

func (d *lazyDaemon) watch(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-d.exited:
	}
	select {
	case err := <-done: // runc returned too: its result decides (the commit point)
		return err
	default:
	}
	if d.status == 0 {
		return <-done
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // runc and its criu
	<-done
	return &transferBroke{code: d.status}
}

// stop kills the daemon (if it still runs), reaps it, drops its pid file and unmounts what CRIU left mounted in
// the work dir. For failures only: a restored process needs its daemon.
func (d *lazyDaemon) stop() {
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	_ = os.Remove(d.pidFile) // it is gone: nobody must signal that pid later
	unmountCgroupYards(d.work)
}

// unmountCgroupYards detaches every mount CRIU's restore left under <work>/.criu.cgyard.* (a killed criu leaves its
// cgroup yard mounted, with the host's cgroup hierarchies below it: the work dir must never be removed
// recursively while it is there). Deepest first; errors are ignored.
func unmountCgroupYards(work string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	prefixes := []string{filepath.Join(filepath.Clean(work), cgroupYardPrefix)}
	if real, err := filepath.EvalSymlinks(work); err == nil && real != filepath.Clean(work) {
		prefixes = append(prefixes, filepath.Join(real, cgroupYardPrefix))
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountinfo(fields[4])
		for _, p := range prefixes {
			if strings.HasPrefix(point, p) {
				points = append(points, point)
				break
			}
		}
	}
	sort.SliceStable(points, func(i, j int) bool {
		return strings.Count(points[i], "/") > strings.Count(points[j], "/")
	})
	for _, p := range points {
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 space, \011 tab, \012 newline, \134 backslash).
func unescapeMountinfo(s string) string {
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// logTail is the end of a log, at most logTailBytes, from a line start.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(none: " + err.Error() + ")"
	}
	if len(data) > logTailBytes {
		data = data[len(data)-logTailBytes:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "(empty)"
	}
	return s
}
