package main

// Post-copy (CRIU lazy pages). See README.md, "Post-copy (lazy pages)".
//
// Source: `checkpoint` with IMG.lpm-lazy.json beside its image directory runs runc as a child with
// `--lazy-pages --page-server <addr> --status-fd 3`, and writes IMG.lpm-lazy-ready once CRIU's page server listens.
// Target: a `ready` with lazy_pages starts `criu lazy-pages` under a supervisor (this binary re-executed) before
// `runc restore --lazy-pages`, and watches it until runc restore returned; then the supervisor kills the restored
// process if the daemon fails.

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
	lazyRequestSuffix      = ".lpm-lazy.json"            // IMG + this: written by the agent; the checkpoint turns lazy
	lazyReadySuffix        = ".lpm-lazy-ready"           // IMG + this: written here once the page server listens
	lazyPagesPID           = "lazy-pages.pid"            // D/lazy-pages.pid: the restore's `criu lazy-pages` daemon
	lazyPagesExit          = "lazy-pages.exit"           // D/lazy-pages.exit: the supervisor, once the daemon exited
	lazyPagesVictim        = "lazy-pages.victim"         // D/lazy-pages.victim: lpm-runc, once runc restore succeeded
	lazyPagesSupervisorLog = "lazy-pages-supervisor.log" // <work>/: the supervisor's one line
	superviseCmd           = "__lazy-supervise"          // the hidden command: lpm-runc re-executed as the supervisor
	lazyPagesSocket        = "lazy-pages.socket"
	lazyPagesLog           = "lazy-pages.log"
	cgroupYardPrefix       = ".criu.cgyard."
	logTailBytes           = 2048
)

// lazyPages is ready.lazy_pages: where `criu lazy-pages` connects for the pages (the source node's CRIU page
// server) and, when TLS is set, the agent's certificate, key and CA that CRIU presents and checks there.
type lazyPages struct {
	Address string   `json:"address"`
	Port    int      `json:"port"`
	TLS     *lazyTLS `json:"tls,omitempty"`
}

type lazyTLS struct {
	CACert string `json:"cacert"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
}

func (l *lazyPages) validate() error {
	if l.Address == "" || strings.ContainsAny(l.Address, " \t\n") {
		return fmt.Errorf("lazy_pages.address %q is not a host", l.Address)
	}
	if l.Port < 1 || l.Port > 65535 {
		return fmt.Errorf("lazy_pages.port %d is not in 1..65535", l.Port)
	}
	if t := l.TLS; t != nil && !(filepath.IsAbs(t.CACert) && filepath.IsAbs(t.Cert) && filepath.IsAbs(t.Key)) {
		return fmt.Errorf("lazy_pages.tls %+v: want absolute paths", *t)
	}
	return nil
}

// daemonArgs are `criu lazy-pages`'s arguments (without "criu").
func (l *lazyPages) daemonArgs(images, work string) []string {
	args := []string{"lazy-pages", "--page-server", "--address", l.Address, "--port", strconv.Itoa(l.Port)}
	if t := l.TLS; t != nil {
		// The agents' certificates name no node: the chain is checked against their CA, not a host name.
		args = append(args, "--tls", "--tls-cacert", t.CACert, "--tls-cert", t.Cert, "--tls-key", t.Key,
			"--tls-no-cn-verify")
	}
	return append(args, "--images-dir", images, "--work-dir", work, "-o", lazyPagesLog, "-v3")
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

func lazyReadySeconds() (float64, error) { return envSeconds("LPM_RUNC_LAZY_READY_SECONDS", 10) }

// lazyDaemon is the restore's `criu lazy-pages`: it serves the restored process's page faults and pulls the rest
// of its memory from the source node's CRIU page server. It runs under a supervisor (this binary re-executed: superviseLazyPages),
// this process's child, which outlives lpm-runc when the restore succeeded: the supervisor exits right after the
// daemon, with its status.
type lazyDaemon struct {
	cmd     *exec.Cmd // the supervisor
	dir     string    // D
	pidFile string
	work    string
	exited  chan struct{} // closed once the supervisor was reaped; status is set then
	status  int           // the daemon's exit code, 128+signal when killed
}

// lazyExit is D/lazy-pages.exit, written by the supervisor once the daemon exited.
type lazyExit struct {
	Code   int    `json:"code"` // 128+signal when killed
	Time   string `json:"time"`
	Killed int    `json:"killed"`          // the restored process killed because the daemon failed, or 0
	Error  string `json:"error,omitempty"` // the daemon could not be started
}

// lazyVictim is D/lazy-pages.victim, written by lpm-runc once runc restore succeeded: the container's init, killed
// by the supervisor if the daemon fails (a released userfaultfd leaves its memory zero-filled).
type lazyVictim struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // field 22 of /proc/<pid>/stat: the pid is not reused
}

// startLazyPages starts the supervisor and its daemon and waits until the daemon's socket and pid file exist. On
// failure both are gone.
func startLazyPages(h handoff, r *readyFile, work string) (*lazyDaemon, error) {
	secs, err := lazyReadySeconds()
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(work, lazyPagesSocket)
	for _, stale := range []string{socket, filepath.Join(h.dir(), lazyPagesExit), filepath.Join(h.dir(), lazyPagesVictim)} {
		_ = os.Remove(stale) // a stale socket would read as ready, a stale victim would be killed
	}
	cmd := exec.Command("/proc/self/exe", append([]string{superviseCmd, h.dir(), work, criuPath()},
		r.LazyPages.daemonArgs(r.Images, work)...)...)
	cmd.Args[0] = "lpm-runc"
	// stdin/stdout/stderr: /dev/null (nil), never the shim's pipes it would hold open; its own session: it
	// outlives this process and no signal for the shim's group reaches it (nor its daemon).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lpm-runc: starting the lazy-pages supervisor: %w", err)
	}
	d := &lazyDaemon{cmd: cmd, dir: h.dir(), pidFile: filepath.Join(h.dir(), lazyPagesPID), work: work,
		exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		d.status = exitStatus(cmd.ProcessState)
		close(d.exited)
	}()
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for {
		if exists(socket) && exists(d.pidFile) {
			return d, nil
		}
		select {
		case <-d.exited:
			d.stop()
			if rec, err := d.exitRecord(); err == nil && rec.Error != "" {
				return nil, fmt.Errorf("lpm-runc: %s", rec.Error)
			}
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

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (d *lazyDaemon) exitRecord() (lazyExit, error) {
	var rec lazyExit
	data, err := os.ReadFile(filepath.Join(d.dir, lazyPagesExit))
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	return rec, err
}

// arm names the restored process (its pid in initPidFile, runc restore's --pid-file) to the supervisor, after runc
// restore succeeded: if the daemon fails from now on, that process is killed. A daemon that failed in between
// (the supervisor removes the pid file before it reads the victim file) is handled here: lpm-runc kills it itself.
func (d *lazyDaemon) arm(initPidFile string) error {
	if initPidFile == "" {
		return fmt.Errorf("no --pid-file: the restored process is unknown")
	}
	data, err := os.ReadFile(initPidFile)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("%s: not a pid: %q", initPidFile, data)
	}
	start, err := procStartTime(pid)
	if err != nil {
		return nil // it is gone already: nothing runs on zero-filled pages
	}
	v := lazyVictim{PID: pid, StartTime: start}
	if err := writeJSON(filepath.Join(d.dir, lazyPagesVictim), v); err != nil {
		return err
	}
	if exists(d.pidFile) {
		return nil // the daemon runs: the supervisor reads the victim file when it exits
	}
	<-d.exited // the supervisor is about to exit
	rec, err := d.exitRecord()
	if d.status != 0 && (err != nil || rec.Killed == 0) && killVictim(v) == "" {
		rec.Killed = pid
		_ = writeJSON(filepath.Join(d.dir, lazyPagesExit), rec)
	}
	return nil
}

// procStartTime is field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(data[i+1:])) // fields 3, 4, ...
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	return strconv.ParseUint(fields[22-3], 10, 64)
}

// killVictim sends SIGKILL to v.PID if it is still the same process; it returns why not, or "" once killed.
func killVictim(v lazyVictim) string {
	if v.PID <= 1 {
		return fmt.Sprintf("victim pid %d is not a process to kill", v.PID)
	}
	start, err := procStartTime(v.PID)
	if err != nil {
		return fmt.Sprintf("victim pid %d is gone", v.PID)
	}
	if start != v.StartTime {
		return fmt.Sprintf("victim pid %d was reused (start time %d, not %d): not killed", v.PID, start, v.StartTime)
	}
	if err := syscall.Kill(v.PID, syscall.SIGKILL); err != nil {
		return fmt.Sprintf("killing victim pid %d: %v", v.PID, err)
	}
	return ""
}

// superviseLazyPages is `lpm-runc __lazy-supervise D WORK CRIU ARG...`, started by startLazyPages in its own
// session: it runs `CRIU ARG...` (criu lazy-pages) as its child, writes its pid to D/lazy-pages.pid and waits for
// it; SIGTERM (lpm-runc's stop) kills it. When it exited: the pid file is removed; if it failed (not 0, a signal
// included), the process in D/lazy-pages.victim, if any and still the same, gets SIGKILL; D/lazy-pages.exit records
// it, and one line goes to WORK/lazy-pages-supervisor.log. It exits with the daemon's status.
func superviseLazyPages(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: lpm-runc "+superviseCmd+" D WORK CRIU ARG...")
		return 2
	}
	dir, work, argv := args[0], args[1], args[2:]
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM) // before the daemon starts: an earlier SIGTERM ends this process alone
	pidFile := filepath.Join(dir, lazyPagesPID)
	var rec lazyExit
	var what string
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Args[0] = "criu"
	if err := cmd.Start(); err != nil {
		rec.Code, rec.Error = 127, fmt.Sprintf("starting %s lazy-pages: %v", argv[0], err)
		what = rec.Error
	} else {
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		stopped := false
		if err := writeAtomic(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n")); err != nil {
			rec.Error = fmt.Sprintf("recording the lazy-pages daemon: %v", err)
			_ = cmd.Process.Kill()
			<-done
		} else {
			select {
			case <-done:
			case <-stop:
				stopped = true
				_ = cmd.Process.Kill()
				<-done
			}
		}
		rec.Code = exitStatus(cmd.ProcessState)
		_ = os.Remove(pidFile) // first: lpm-runc arming a victim now sees that the daemon is gone
		what = fmt.Sprintf("criu lazy-pages (pid %d) exited with %d", cmd.Process.Pid, rec.Code)
		switch {
		case rec.Error != "":
			what += ": " + rec.Error
		case stopped:
			what += " (killed on SIGTERM)"
		case rec.Code == 0:
			what += ": every page arrived"
		default:
			what += ": the page stream broke"
		}
		if rec.Code != 0 { // lpm-runc's failed restore wrote no victim file; a SIGTERM later is a failure too
			what += "; " + rec.killVictim(dir)
		}
	}
	rec.Time = time.Now().UTC().Format(time.RFC3339Nano)
	if err := writeJSON(filepath.Join(dir, lazyPagesExit), rec); err != nil {
		what += fmt.Sprintf("; writing %s: %v", lazyPagesExit, err)
	}
	if f, err := os.OpenFile(filepath.Join(work, lazyPagesSupervisorLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		fmt.Fprintf(f, "%s lpm-runc supervisor: %s\n", rec.Time, what)
		f.Close()
	}
	return min(rec.Code, 255)
}

// killVictim (supervisor) kills the restored process named in D/lazy-pages.victim and says what it did.
func (rec *lazyExit) killVictim(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, lazyPagesVictim))
	if errors.Is(err, os.ErrNotExist) {
		return "no restored process to kill (runc restore did not succeed)"
	}
	var v lazyVictim
	if err == nil {
		err = json.Unmarshal(data, &v)
	}
	if err != nil {
		return fmt.Sprintf("%s: %v", lazyPagesVictim, err)
	}
	if why := killVictim(v); why != "" {
		return why
	}
	rec.Killed = v.PID
	return fmt.Sprintf("killed the restored process (pid %d): its memory would read as zeros", v.PID)
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

// stop has the supervisor kill the daemon (if it still runs: SIGTERM to the supervisor, this process's child),
// waits for the supervisor, drops the pid file and unmounts what CRIU left mounted in the work dir. For failures
// only (no victim file exists then): a restored process needs its daemon.
func (d *lazyDaemon) stop() {
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
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

// pageStreamBroke says whether a post-copy restore of this container lost its page stream after the restore
// (the supervisor recorded a failed daemon), and the daemon's exit code.
func (h handoff) pageStreamBroke() (int, bool) {
	data, err := os.ReadFile(filepath.Join(h.dir(), lazyPagesExit))
	if err != nil {
		return 0, false
	}
	var rec lazyExit
	if json.Unmarshal(data, &rec) != nil {
		return 0, false
	}
	return rec.Code, rec.Code != 0 && h.restored()
}
