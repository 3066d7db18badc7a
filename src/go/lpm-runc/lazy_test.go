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

// reap kills what the fakes left running (the daemon outlives lpm-runc by design) and CRIU's fake cgroup yard.
func (e *env) reap() {
	e.t.Cleanup(func() {
		for _, f := range []string{"criu.pid", "hang.pid"} {
			if b, err := os.ReadFile(filepath.Join(e.dir, f)); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		matches, _ := filepath.Glob(filepath.Join(e.root, "*", "*", "work", cgroupYardPrefix+"*"))
		for _, m := range matches {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	})
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
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
		filepath.Join(staged, "images"), "--work-dir", work, "-o", "lazy-pages.log", "-v4"}
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
	if err != nil || r.LazyPages == nil || *r.LazyPages != (lazyPages{"127.0.0.1", 7000}) {
		t.Errorf("%+v %v", r, err)
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
