package main

// Post-copy, end to end: the fake runc (checkpoint: writes \0 to its status fd 3 when FAKE_STATUS is set;
// restore: hangs with CRIU's cgroup yard mounted when FAKE_HANG is set) and the fake `criu lazy-pages`
// (fakeCriu in main_test.go).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func pidIn(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

func waitGone(t *testing.T, what string, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs", what, pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reap kills what the fakes left running (the daemon and the restored process outlive lpm-runc by design), waits
// for the supervisor (it writes into D), and unmounts CRIU's fake cgroup yard.
func (e *env) reap() {
	e.t.Cleanup(func() {
		pid := func(f string) int {
			b, _ := os.ReadFile(filepath.Join(e.dir, f))
			p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return p
		}
		for _, f := range []string{"criu.pid", "hang.pid", "victim.pid"} {
			if p := pid(f); p > 1 {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if p := pid("supervisor.pid"); p > 1 {
			for deadline := time.Now().Add(3 * time.Second); alive(p) && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
		}
		matches, _ := filepath.Glob(filepath.Join(e.root, "*", "*", "work", cgroupYardPrefix+"*"))
		for _, m := range matches {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	})
}

// supervisorLog is the supervisor's log line(s) under D/work. It writes them after the exit record (exitRecord
// returns as soon as that exists), so this waits, briefly, for the line's end.
func supervisorLog(t *testing.T, d string) string {
	t.Helper()
	path := filepath.Join(d, "work", lazyPagesSupervisorLog)
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if data, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(data), "\n") {
			return string(data)
		}
		if time.Now().After(deadline) {
			return readFile(t, path)
		}
	}
}

// exitRecord waits (3 s at most) for D/lazy-pages.exit, the supervisor's record of the daemon's exit.
func exitRecord(t *testing.T, d string) lazyExit {
	t.Helper()
	path := filepath.Join(d, lazyPagesExit)
	for deadline := time.Now().Add(3 * time.Second); !exists(path); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s", lazyPagesExit)
		}
	}
	var rec lazyExit
	if err := json.Unmarshal([]byte(readFile(t, path)), &rec); err != nil {
		t.Fatalf("%s: %v", lazyPagesExit, err)
	}
	if _, err := time.Parse(time.RFC3339Nano, rec.Time); err != nil {
		t.Errorf("%s: time %q", lazyPagesExit, rec.Time)
	}
	return rec
}

// ---- checkpoint ----

func (e *env) checkpointArgv(image string, inline bool) []string {
	img := []string{"--image-path", image}
	if inline {
		img = []string{"--image-path=" + image}
	}
	argv := []string{"--root", e.runcRoot, "--log", e.logPath, "--log-format", "json", "checkpoint"}
	argv = append(argv, img...)
	return append(argv, "--work-path", filepath.Join(e.dir, "ckpt-work"), "--leave-running", "--tcp-established", "c1")
}

func lazyArgs(argv []string, pageServer string) []string {
	n := len(argv) - 1
	out := append([]string{}, argv[:n]...)
	out = append(out, "--lazy-pages", "--page-server", pageServer, "--status-fd", "3")
	return append(out, argv[n:]...)
}

func TestCheckpointWithoutRequestPassesThrough(t *testing.T) {
	e := newEnv(t)
	image := filepath.Join(e.dir, ".x-images-abc")
	for _, inline := range []bool{false, true} {
		argv := e.checkpointArgv(image, inline)
		code, out, stderr := e.run(argv...)
		if got := e.runcArgs(); code != 0 || !reflect.DeepEqual(got, argv) || out != "fake-runc-stdout\n" {
			t.Errorf("code %d (%s), runc got %q, want %q", code, stderr, got, argv)
		}
	}
	if exists(image + lazyReadySuffix) {
		t.Errorf("a ready file for a plain checkpoint")
	}
}

func TestCheckpointLazy(t *testing.T) {
	e := newEnv(t)
	image := filepath.Join(e.dir, ".x-images-abc")
	must(t, os.WriteFile(image+lazyRequestSuffix, []byte(`{"page_server": "127.0.0.1:7123"}`), 0o600))
	for _, c := range []struct {
		rc     string
		code   int
		inline bool
	}{{"0", 0, false}, {"5", 5, true}} {
		os.Remove(image + lazyReadySuffix)
		os.Remove(filepath.Join(e.dir, "saw-ready"))
		os.Remove(filepath.Join(e.dir, "checkpoint-done"))
		e.extra = []string{"FAKE_STATUS=1", "FAKE_CKPT_RC=" + c.rc}
		argv := e.checkpointArgv(image, c.inline)
		t0 := time.Now()
		code, out, stderr := e.run(argv...)
		if code != c.code || out != "fake-runc-stdout\n" {
			t.Errorf("rc %s: code %d, stdout %q, stderr %s", c.rc, code, out, stderr)
		}
		if got, want := e.runcArgs(), lazyArgs(argv, "127.0.0.1:7123"); !reflect.DeepEqual(got, want) {
			t.Errorf("runc got\n %q\nwant\n %q", got, want)
		}
		if !exists(filepath.Join(e.dir, "saw-ready")) {
			t.Errorf("rc %s: the ready file did not appear while runc served pages", c.rc)
		}
		if !exists(filepath.Join(e.dir, "checkpoint-done")) {
			t.Errorf("rc %s: lpm-runc did not wait for runc", c.rc)
		}
		var r struct {
			Time string `json:"time"`
			PID  int    `json:"pid"`
		}
		if err := json.Unmarshal([]byte(readFile(t, image+lazyReadySuffix)), &r); err != nil || r.PID <= 0 {
			t.Fatalf("ready file: %+v %v", r, err)
		}
		if at, err := time.Parse(time.RFC3339Nano, r.Time); err != nil || at.Before(t0.Add(-time.Second)) {
			t.Errorf("ready time %q: %v", r.Time, err)
		}
	}
}

func TestCheckpointLazyWithoutStatus(t *testing.T) {
	e := newEnv(t)
	image := filepath.Join(e.dir, "images")
	must(t, os.WriteFile(image+lazyRequestSuffix, []byte(`{"page_server": "127.0.0.1:7123"}`), 0o600))
	for _, c := range []struct {
		extra string
		code  int
	}{{"FAKE_CKPT_RC=4", 4}, {"FAKE_SIGNAL=1", 1}} {
		e.extra = []string{c.extra}
		argv := e.checkpointArgv(image, false)
		code, _, stderr := e.run(argv...)
		if code != c.code {
			t.Errorf("%s: code %d, want %d (%s)", c.extra, code, c.code, stderr)
		}
		if got, want := e.runcArgs(), lazyArgs(argv, "127.0.0.1:7123"); !reflect.DeepEqual(got, want) {
			t.Errorf("runc got %q, want %q", got, want)
		}
		if exists(image + lazyReadySuffix) {
			t.Errorf("%s: a ready file without CRIU's \\0", c.extra)
		}
	}
}

func TestCheckpointLazyRefused(t *testing.T) {
	e := newEnv(t)
	image := filepath.Join(e.dir, "images")
	for _, c := range []struct {
		request string
		extra   []string
		want    string
	}{
		{`not json`, nil, "invalid character"},
		{`{"page_server": "127.0.0.1"}`, nil, "is not host:port"},
		{`{"page_server": "127.0.0.1:0"}`, nil, "not a number in 1..65535"},
		{`{"page_server": "127.0.0.1:http"}`, nil, "not a number in 1..65535"},
		{`{}`, nil, "is not host:port"},
		{`{"page_server": "127.0.0.1:7123"}`, []string{"--lazy-pages"}, "sets --lazy-pages, --page-server or --status-fd itself"},
		{`{"page_server": "127.0.0.1:7123"}`, []string{"--status-fd=4"}, "itself"},
	} {
		must(t, os.WriteFile(image+lazyRequestSuffix, []byte(c.request), 0o600))
		argv := e.checkpointArgv(image, false)
		argv = append(append(argv[:len(argv)-1:len(argv)-1], c.extra...), "c1")
		code, _, stderr := e.run(argv...)
		if code != 1 || !strings.Contains(stderr, "lpm-runc: invalid post-copy request") || !strings.Contains(stderr, c.want) {
			t.Errorf("%s %q: code %d, stderr %q", c.request, c.extra, code, stderr)
		}
		if got := e.runcArgs(); got != nil {
			t.Errorf("%s: runc ran: %q", c.request, got)
		}
		if l := lastLogLine(t, e.logPath); l.Level != "error" || !strings.Contains(l.Msg, c.want) {
			t.Errorf("log line %+v", l)
		}
	}
}

// ---- create -> restore ----

// lazyReady stages a checkpoint for container "app" of ckpt as the agent does, with lazy_pages; returns D and
// the staged directory.
func (e *env) lazyReady(ckpt string, port int) (string, string) {
	e.config(restoreAnn(ckpt, "container"))
	d := filepath.Join(e.root, ckpt, "app")
	staged := filepath.Join(d, "staged")
	must(e.t, os.MkdirAll(filepath.Join(staged, "images"), 0o700))
	ready, _ := json.Marshal(map[string]any{"images": filepath.Join(staged, "images"),
		"lazy_pages": map[string]any{"address": "127.0.0.1", "port": port}})
	must(e.t, os.WriteFile(filepath.Join(d, "ready"), ready, 0o600))
	e.reap()
	return d, staged
}

func TestCreateRestoresLazily(t *testing.T) {
	e := newEnv(t)
	d, staged := e.lazyReady("ck-l1", 7124)
	work := filepath.Join(d, "work")
	code, out, stderr := e.run(e.createArgv("c1")...) // returns: the daemon holds none of its pipes
	if code != 0 || out != "fake-runc-stdout\n" {
		t.Fatalf("create: code %d, stdout %q, stderr %s", code, out, stderr)
	}
	want := []string{"--root", e.runcRoot, "--log", e.logPath, "--log-format", "json", "restore", "--detach",
		"--no-subreaper", "--bundle", e.bundle, "--pid-file", filepath.Join(e.bundle, "init.pid"), "--lazy-pages",
		"--image-path", filepath.Join(staged, "images"), "--work-path", work, "c1"}
	if got := e.runcArgs(); !reflect.DeepEqual(got, want) {
		t.Errorf("runc got\n %q\nwant\n %q", got, want)
	}
	wantCriu := []string{"lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", "7124", "--images-dir",
		filepath.Join(staged, "images"), "--work-dir", work, "-o", "lazy-pages.log", "-v3"}
	if got := strings.Split(strings.TrimSpace(readFile(t, filepath.Join(e.dir, "criu-args"))), "\n"); !reflect.DeepEqual(got, wantCriu) {
		t.Errorf("criu got\n %q\nwant\n %q", got, wantCriu)
	}
	pid := pidIn(t, filepath.Join(e.dir, "criu.pid"))
	if got := pidIn(t, filepath.Join(d, lazyPagesPID)); got != pid || pid == 0 {
		t.Errorf("%s holds %d, the daemon is %d", lazyPagesPID, got, pid)
	}
	if !alive(pid) {
		t.Errorf("the lazy-pages daemon did not outlive lpm-runc")
	}
	sup := pidIn(t, filepath.Join(e.dir, "supervisor.pid"))
	if cl := readFile(t, "/proc/"+strconv.Itoa(sup)+"/cmdline"); !alive(sup) ||
		!strings.HasPrefix(cl, "lpm-runc\x00"+superviseCmd+"\x00"+d+"\x00"+work+"\x00"+e.criu+"\x00lazy-pages\x00") {
		t.Errorf("the daemon's parent (pid %d, alive %v) is not its supervisor: %q", sup, alive(sup), cl)
	}
	if sid := statField(t, sup, 6); sid != strconv.Itoa(sup) {
		t.Errorf("the supervisor is not in its own session (%s)", sid)
	}
	victim := pidIn(t, filepath.Join(e.dir, "victim.pid"))
	var v lazyVictim
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(d, lazyPagesVictim))), &v); err != nil ||
		v.PID != victim || victim == 0 || v.StartTime != startTime(t, victim) {
		t.Errorf("%s: %+v %v, want pid %d", lazyPagesVictim, v, err, victim)
	}
	if !alive(victim) || exists(filepath.Join(d, lazyPagesExit)) {
		t.Errorf("the restored process alive %v, exit record %v", alive(victim), exists(filepath.Join(d, lazyPagesExit)))
	}
	if !exists(staged) {
		t.Errorf("the staged images were removed while the daemon reads them")
	}
	if !exists(filepath.Join(d, "restored")) || !exists(filepath.Join(e.runcRoot, "c1", restoredMarker)) {
		t.Errorf("restored / start marker missing")
	}
}

func TestCreateLazyDaemonNotReady(t *testing.T) {
	for _, c := range []struct {
		name  string
		extra []string
		want  []string
	}{
		{"exits", []string{"FAKE_CRIU_RC=3"}, []string{
			"lpm-runc: criu lazy-pages exited before it was ready (exit 3); its log: ",
			"fake: cannot connect to the page server"}},
		{"too slow", []string{"FAKE_CRIU_NOSOCKET=1", "LPM_RUNC_LAZY_READY_SECONDS=0.3"}, []string{
			"lpm-runc: criu lazy-pages was not ready within 0.3s (killed); its log: ", "fake starting"}},
		{"no criu", []string{"LPM_RUNC_CRIU=/nonexistent/criu"}, []string{
			"lpm-runc: starting /nonexistent/criu lazy-pages: ", "no such file or directory"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			d, staged := e.lazyReady("ck-l2", 7125)
			e.extra = c.extra
			t0 := time.Now()
			code, _, stderr := e.run(e.createArgv("c1")...)
			if code != 1 || time.Since(t0) > 5*time.Second {
				t.Fatalf("code %d after %v, stderr %q", code, time.Since(t0), stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			if l := lastLogLine(t, e.logPath); !strings.Contains(l.Msg, c.want[0]) {
				t.Errorf("log line %+v", l)
			}
			if got := e.runcArgs(); got != nil {
				t.Errorf("runc ran: %q", got)
			}
			waitGone(t, "the lazy-pages daemon", pidIn(t, filepath.Join(e.dir, "criu.pid")))
			if exists(filepath.Join(d, lazyPagesPID)) || exists(filepath.Join(d, "restored")) || !exists(staged) {
				t.Errorf("pid file %v, restored %v, staged %v", exists(filepath.Join(d, lazyPagesPID)),
					exists(filepath.Join(d, "restored")), exists(staged))
			}
			if rec := exitRecord(t, d); rec.Code == 0 || rec.Killed != 0 || exists(filepath.Join(d, lazyPagesVictim)) {
				t.Errorf("exit record %+v, victim file %v", rec, exists(filepath.Join(d, lazyPagesVictim)))
			}
		})
	}
}

func TestCreateLazyTransferBreaksDuringRestore(t *testing.T) {
	e := newEnv(t)
	d, _ := e.lazyReady("ck-l3", 7126)
	e.extra = []string{"FAKE_CRIU_DIE_AFTER=0.3", "FAKE_HANG=1"}
	t0 := time.Now()
	code, _, stderr := e.run(e.createArgv("c1")...)
	want := "lpm-runc: the post-copy page transfer of checkpoint ck-l3 broke during the restore (criu lazy-pages " +
		"exited with 1); the replacement was not started"
	if code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	if dt := time.Since(t0); dt > 5*time.Second {
		t.Errorf("took %v: runc restore was not killed", dt)
	}
	if l := lastLogLine(t, e.logPath); l.Msg != want {
		t.Errorf("log line %+v", l)
	}
	waitGone(t, "runc restore's child", pidIn(t, filepath.Join(e.dir, "hang.pid")))
	var f struct {
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(d, "failed"))), &f); err != nil || f.ExitCode != 1 {
		t.Errorf("failed marker: %+v %v", f, err)
	}
	if exists(filepath.Join(d, "restored")) || exists(filepath.Join(d, lazyPagesPID)) {
		t.Errorf("restored or pid file left after a broken transfer")
	}
	if rec := exitRecord(t, d); rec.Code != 1 || rec.Killed != 0 || exists(filepath.Join(d, lazyPagesVictim)) {
		t.Errorf("exit record %+v, victim file %v", rec, exists(filepath.Join(d, lazyPagesVictim)))
	}
	work := filepath.Join(d, "work")
	if !exists(work) {
		t.Errorf("the work dir was removed")
	}
	if exists(filepath.Join(e.dir, "yard-mounted")) {
		if mi := readFile(t, "/proc/self/mountinfo"); strings.Contains(mi, filepath.Join(work, cgroupYardPrefix)) {
			t.Errorf("CRIU's cgroup yard is still mounted:\n%s", mi)
		}
	} else {
		t.Logf("tmpfs not mountable here: the yard's unmount is not covered")
	}
}

func TestCreateLazyRestoreFailureKillsDaemon(t *testing.T) {
	e := newEnv(t)
	d, _ := e.lazyReady("ck-l4", 7127)
	e.extra = []string{"FAKE_RC=3"}
	code, _, stderr := e.run(e.createArgv("c1")...)
	if code != 3 || !strings.Contains(stderr, "fake restore failed") {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	if got := e.runcArgs(); len(got) < 2 || !reflect.DeepEqual(got[len(got)-6:len(got)-5], []string{"--lazy-pages"}) {
		t.Errorf("runc got %q", got)
	}
	waitGone(t, "the lazy-pages daemon", pidIn(t, filepath.Join(e.dir, "criu.pid")))
	if !exists(filepath.Join(d, "failed")) || exists(filepath.Join(d, lazyPagesPID)) {
		t.Errorf("failed %v, pid file %v", exists(filepath.Join(d, "failed")), exists(filepath.Join(d, lazyPagesPID)))
	}
	// lpm-runc waited for the supervisor: its record is there; SIGKILL (137), nothing else killed.
	if rec := exitRecord(t, d); rec.Code != 137 || rec.Killed != 0 || exists(filepath.Join(d, lazyPagesVictim)) {
		t.Errorf("exit record %+v, victim file %v", rec, exists(filepath.Join(d, lazyPagesVictim)))
	}
	if log := supervisorLog(t, d); !strings.Contains(log, "exited with 137 (killed on SIGTERM); no restored process to kill") {
		t.Errorf("supervisor log %q", log)
	}
}

// statField is field n (n >= 3) of /proc/<pid>/stat.
func statField(t *testing.T, pid, n int) string {
	t.Helper()
	s := readFile(t, "/proc/"+strconv.Itoa(pid)+"/stat")
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return fields[n-3]
}

func startTime(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := procStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// lazyRestored runs a successful lazy restore whose daemon exits once $FAKE_DIR/criu-exit exists; returns D and
// the restored process's pid.
func (e *env) lazyRestored(ckpt string) (string, int) {
	t := e.t
	t.Helper()
	d, _ := e.lazyReady(ckpt, 7128)
	e.extra = []string{"FAKE_CRIU_WAIT_EXIT=1"}
	if code, _, stderr := e.run(e.createArgv("c1")...); code != 0 {
		t.Fatalf("create: code %d, stderr %s", code, stderr)
	}
	victim := pidIn(t, filepath.Join(e.dir, "victim.pid"))
	if victim == 0 || !alive(victim) {
		t.Fatalf("the restored process (pid %d) does not run", victim)
	}
	return d, victim
}

// The page stream breaks after the restore: the restored process must not run on zero-filled pages.
func TestLazyDaemonFailureAfterRestoreKillsTheProcess(t *testing.T) {
	e := newEnv(t)
	d, victim := e.lazyRestored("ck-l5")
	must(t, os.WriteFile(filepath.Join(e.dir, "criu-exit"), []byte("1\n"), 0o600))
	t0 := time.Now()
	waitGone(t, "the restored process", victim)
	if dt := time.Since(t0); dt > 2*time.Second {
		t.Errorf("killed after %v", dt)
	}
	if rec := exitRecord(t, d); rec.Code != 1 || rec.Killed != victim {
		t.Errorf("exit record %+v, want code 1, killed %d", rec, victim)
	}
	logPath := filepath.Join(d, "work", lazyPagesSupervisorLog)
	want := "exited with 1: the page stream broke; killed the restored process (pid " + strconv.Itoa(victim) + ")"
	if log := supervisorLog(t, d); strings.Count(log, "\n") != 1 || !strings.Contains(log, want) {
		t.Errorf("supervisor log %q lacks %q", log, want)
	}
	if st, err := os.Stat(logPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("supervisor log mode: %v %v", st.Mode(), err)
	}
	if exists(filepath.Join(d, lazyPagesPID)) {
		t.Errorf("%s left after the daemon exited", lazyPagesPID)
	}
	// The kubelet restarts the killed container: that create fails, never a fresh start beside the source that
	// the migration's rollback thaws.
	e.extra = nil
	code, _, stderr := e.run(e.createArgv("c2")...)
	if code != 1 || !strings.Contains(stderr, "post-copy page stream of checkpoint ck-l5 broke after the restore") {
		t.Errorf("restart after a broken page stream: code %d, stderr %s", code, stderr)
	}
}

// Every page arrived: the restored process runs on.
func TestLazyDaemonDoneAfterRestoreLeavesTheProcess(t *testing.T) {
	e := newEnv(t)
	d, victim := e.lazyRestored("ck-l6")
	must(t, os.WriteFile(filepath.Join(e.dir, "criu-exit"), []byte("0\n"), 0o600))
	if rec := exitRecord(t, d); rec.Code != 0 || rec.Killed != 0 {
		t.Errorf("exit record %+v", rec)
	}
	waitGone(t, "the supervisor", pidIn(t, filepath.Join(e.dir, "supervisor.pid")))
	time.Sleep(100 * time.Millisecond)
	if !alive(victim) {
		t.Errorf("the restored process was killed though every page arrived")
	}
	if log := supervisorLog(t, d); !strings.Contains(log, "exited with 0: every page arrived") {
		t.Errorf("supervisor log %q", log)
	}
}

// The victim's pid now belongs to another process (its start time differs): nothing is killed.
func TestLazyVictimPidReusedNotKilled(t *testing.T) {
	e := newEnv(t)
	d, victim := e.lazyRestored("ck-l7")
	st := startTime(t, victim)
	must(t, writeJSON(filepath.Join(d, lazyPagesVictim), lazyVictim{PID: victim, StartTime: st + 1}))
	must(t, os.WriteFile(filepath.Join(e.dir, "criu-exit"), []byte("1\n"), 0o600))
	if rec := exitRecord(t, d); rec.Code != 1 || rec.Killed != 0 {
		t.Errorf("exit record %+v", rec)
	}
	waitGone(t, "the supervisor", pidIn(t, filepath.Join(e.dir, "supervisor.pid")))
	if !alive(victim) {
		t.Errorf("a process with another start time was killed")
	}
	want := "victim pid " + strconv.Itoa(victim) + " was reused (start time " + strconv.FormatUint(st, 10) + ", not " +
		strconv.FormatUint(st+1, 10) + "): not killed"
	if log := supervisorLog(t, d); !strings.Contains(log, want) {
		t.Errorf("supervisor log %q lacks %q", log, want)
	}
}

func TestProcStartTime(t *testing.T) {
	st := startTime(t, os.Getpid())
	if st == 0 {
		t.Errorf("start time 0")
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Errorf("a start time for a pid that does not exist")
	}
}

func TestParseReadyLazyPages(t *testing.T) {
	dir := t.TempDir()
	for _, lp := range []string{`{"address": "", "port": 7000}`, `{"address": "127.0.0.1", "port": 0}`,
		`{"address": "127.0.0.1", "port": 65536}`, `{"address": "127.0.0.1"}`} {
		if _, err := parseReady([]byte(`{"images": "` + dir + `", "lazy_pages": ` + lp + `}`)); err == nil {
			t.Errorf("lazy_pages %s accepted", lp)
		}
	}
	r, err := parseReady([]byte(`{"images": "` + dir + `", "lazy_pages": {"address": "127.0.0.1", "port": 7000}}`))
	if err != nil || r.LazyPages == nil || r.LazyPages.Address != "127.0.0.1" || r.LazyPages.Port != 7000 ||
		r.LazyPages.TLS != nil {
		t.Errorf("%+v %v", r, err)
	}
	if _, err := parseReady([]byte(`{"images": "` + dir + `", "lazy_pages": {"address": "10.0.0.1", "port": 7000, ` +
		`"tls": {"cacert": "ca.crt", "cert": "/t/tls.crt", "key": "/t/tls.key"}}}`)); err == nil {
		t.Errorf("relative TLS paths accepted")
	}
}

func TestLazyPagesDaemonSpeaksTLSWithTheAgentsCertificates(t *testing.T) {
	l := lazyPages{Address: "10.0.0.1", Port: 7000, TLS: &lazyTLS{"/t/ca.crt", "/t/tls.crt", "/t/tls.key"}}
	want := []string{"lazy-pages", "--page-server", "--address", "10.0.0.1", "--port", "7000", "--tls",
		"--tls-cacert", "/t/ca.crt", "--tls-cert", "/t/tls.crt", "--tls-key", "/t/tls.key", "--tls-no-cn-verify",
		"--images-dir", "/i", "--work-dir", "/w", "-o", "lazy-pages.log", "-v3"}
	if got := l.daemonArgs("/i", "/w"); !reflect.DeepEqual(got, want) {
		t.Errorf("got\n %q\nwant\n %q", got, want)
	}
}

func TestUnmountCgroupYards(t *testing.T) {
	work := filepath.Join(t.TempDir(), "a work")
	yard := filepath.Join(work, cgroupYardPrefix+"x")
	must(t, os.MkdirAll(yard, 0o700))
	if err := syscall.Mount("yard", yard, "tmpfs", 0, ""); err != nil {
		t.Skipf("tmpfs not mountable here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(yard, syscall.MNT_DETACH) })
	must(t, os.Mkdir(filepath.Join(yard, "cpu"), 0o700))
	must(t, syscall.Mount("cpu", filepath.Join(yard, "cpu"), "tmpfs", 0, ""))
	other := filepath.Join(work, "kept")
	must(t, os.Mkdir(other, 0o700))
	must(t, syscall.Mount("kept", other, "tmpfs", 0, ""))
	t.Cleanup(func() { _ = syscall.Unmount(other, syscall.MNT_DETACH) })
	if got := unescapeMountinfo(`/x/a\040work/y\134z`); got != `/x/a work/y\z` {
		t.Errorf("unescape: %q", got)
	}
	unmountCgroupYards(work)
	mi := readFile(t, "/proc/self/mountinfo")
	if strings.Contains(mi, `a\040work/`+cgroupYardPrefix) {
		t.Errorf("the yard is still mounted:\n%s", mi)
	}
	if !strings.Contains(mi, `a\040work/kept`) {
		t.Errorf("a mount outside the yard was unmounted")
	}
}

// A supervisor stopped after the restore (SIGTERM: it kills its daemon) takes the restored process along.
func TestLazySupervisorStoppedAfterRestoreKillsTheProcess(t *testing.T) {
	e := newEnv(t)
	d, victim := e.lazyRestored("ck-l8")
	must(t, syscall.Kill(pidIn(t, filepath.Join(e.dir, "supervisor.pid")), syscall.SIGTERM))
	waitGone(t, "the restored process", victim)
	if rec := exitRecord(t, d); rec.Code != 137 || rec.Killed != victim {
		t.Errorf("exit record %+v, want code 137, killed %d", rec, victim)
	}
}
