package main

// End-to-end tests of the wrapper binary: the test binary re-executes itself as lpm-runc
// (LPM_RUNC_TEST_MAIN=1), with a fake runc (a shell script, through LPM_RUNC_RUNC) that records the
// arguments it was given. The fake is the boundary: what the wrapper hands to runc is what is asserted.

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv("LPM_RUNC_TEST_MAIN") == "1" {
		main()
		os.Exit(0) // main exits itself; not reached
	}
	os.Exit(m.Run())
}

const fakeRunc = `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_DIR/args"
echo "fake-runc-stdout"
root=/run/runc; cmd=; last=
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift;;
    --work-path) work=$2; shift;;
    --image-path) img=$2; shift;;
    --image-path=*) img=${1#*=};;
    --pid-file) pidfile=$2; shift;;
    --lazy-pages) lazy=1;;
    restore|create|start|state|delete|checkpoint) [ -z "$cmd" ] && cmd=$1;;
  esac
  last=$1; shift
done
if [ "$cmd" = checkpoint ]; then
  if [ -n "$FAKE_STATUS" ]; then
    printf '\0' >&3 # CRIU: the page server listens
    i=0
    while [ ! -e "$img.lpm-lazy-ready" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
    [ -e "$img.lpm-lazy-ready" ] && touch "$FAKE_DIR/saw-ready"
    sleep 0.1 # the pages go
  fi
  [ -n "$FAKE_SIGNAL" ] && kill -KILL $$
  touch "$FAKE_DIR/checkpoint-done"
  exit "${FAKE_CKPT_RC:-0}"
fi
if [ "$cmd" = restore ] && [ -n "$FAKE_HANG" ]; then
  # runc restore --lazy-pages when the page transfer broke: CRIU's cgroup yard mounted, criu stuck
  y="$work/.criu.cgyard.fake"
  mkdir -p "$y" && mount -t tmpfs yard "$y" && mkdir "$y/sub" && mount -t tmpfs sub "$y/sub" &&
    touch "$FAKE_DIR/yard-mounted"
  sleep 30 &
  echo $! > "$FAKE_DIR/hang.pid"
  wait
fi
if [ "$cmd" = restore ]; then
  if [ -n "$FAKE_RC" ]; then
    echo "(00.1) Error (criu/files-reg.c:1): boom" > "$work/restore.log"
    echo "fake restore failed" >&2; exit "$FAKE_RC"
  fi
  mkdir -p "$root/$last"
  if [ -n "$lazy" ] && [ -n "$pidfile" ]; then
    # the restored container's init
    sleep 30 </dev/null >/dev/null 2>&1 &
    echo $! > "$pidfile"; echo $! > "$FAKE_DIR/victim.pid"
  fi
fi
exit 0
`

// fakeCriu is `criu lazy-pages`: it records its arguments, its pid and its parent's (the supervisor), logs to its
// work dir, and creates its socket (unless FAKE_CRIU_RC: it fails first; FAKE_CRIU_NOSOCKET: never). Then it
// serves (sleeps) or, with FAKE_CRIU_DIE_AFTER, loses the page stream after that many seconds (exit 1), or, with
// FAKE_CRIU_WAIT_EXIT, exits once $FAKE_DIR/criu-exit exists, with the code it holds.
const fakeCriu = `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_DIR/criu-args"
echo $$ > "$FAKE_DIR/criu.pid"
echo $PPID > "$FAKE_DIR/supervisor.pid"
while [ $# -gt 0 ]; do
  case "$1" in
    --work-dir) work=$2; shift;;
  esac
  shift
done
echo "(00.000000) lazy-pages: fake starting" >> "$work/lazy-pages.log"
if [ -n "$FAKE_CRIU_RC" ]; then
  echo "(00.000100) Error (criu/page-xfer.c:1): fake: cannot connect to the page server" >> "$work/lazy-pages.log"
  exit "$FAKE_CRIU_RC"
fi
[ -n "$FAKE_CRIU_NOSOCKET" ] || : > "$work/lazy-pages.socket"
if [ -n "$FAKE_CRIU_DIE_AFTER" ]; then
  sleep "$FAKE_CRIU_DIE_AFTER"
  exit 1
fi
if [ -n "$FAKE_CRIU_WAIT_EXIT" ]; then
  while [ ! -e "$FAKE_DIR/criu-exit" ]; do sleep 0.01; done
  exit $(cat "$FAKE_DIR/criu-exit")
fi
exec sleep 30
`

type env struct {
	t                         *testing.T
	dir, fake, root, runcRoot string
	bundle, handoff, logPath  string
	criu                      string
	extra                     []string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	e := &env{t: t, dir: dir, fake: filepath.Join(dir, "runc"), root: filepath.Join(dir, "restore"),
		runcRoot: filepath.Join(dir, "runc-state"), bundle: filepath.Join(dir, "bundle"),
		logPath: filepath.Join(dir, "bundle", "log.json")}
	must(t, os.WriteFile(e.fake, []byte(fakeRunc), 0o755))
	e.criu = filepath.Join(dir, "criu")
	must(t, os.WriteFile(e.criu, []byte(fakeCriu), 0o755))
	must(t, os.MkdirAll(filepath.Join(e.bundle, "rootfs", "etc"), 0o755))
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) config(ann map[string]string) {
	cfg := map[string]any{"ociVersion": "1.0.2", "root": map[string]any{"path": "rootfs"}, "annotations": ann}
	b, _ := json.Marshal(cfg)
	must(e.t, os.WriteFile(filepath.Join(e.bundle, "config.json"), b, 0o600))
}

func restoreAnn(ckpt, typ string) map[string]string {
	return map[string]string{annRestore: ckpt, annContainerType: typ, annContainerName: "app",
		"io.kubernetes.cri.sandbox-id": "abc"}
}

// run executes the wrapper; returns exit code, stdout, stderr.
func (e *env) run(args ...string) (int, string, string) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "LPM_RUNC_TEST_MAIN=1", "LPM_RUNC_RUNC="+e.fake, "FAKE_DIR="+e.dir,
		"LPM_RUNC_RESTORE_ROOT="+e.root, "LPM_RUNC_CRIU="+e.criu)
	cmd.Env = append(cmd.Env, e.extra...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func (e *env) runcArgs() []string {
	b, err := os.ReadFile(filepath.Join(e.dir, "args"))
	if err != nil {
		return nil
	}
	os.Remove(filepath.Join(e.dir, "args"))
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func (e *env) createArgv(id string) []string {
	return []string{"--root", e.runcRoot, "--log", e.logPath, "--log-format", "json", "create", "--bundle",
		e.bundle, "--pid-file", filepath.Join(e.bundle, "init.pid"), "--no-new-keyring", id}
}

func TestPassThrough(t *testing.T) {
	e := newEnv(t)
	for _, argv := range [][]string{
		{"--version"},
		{"--root", e.runcRoot, "state", "nope"},
		{"--root=" + e.runcRoot, "--log", "x", "delete", "--force", "c1"},
		{"--root", e.runcRoot, "start", "c1"}, // no marker: runc start
	} {
		code, out, _ := e.run(argv...)
		if got := e.runcArgs(); code != 0 || !reflect.DeepEqual(got, argv) || out != "fake-runc-stdout\n" {
			t.Errorf("%q: code %d, runc got %q, stdout %q", argv, code, got, out)
		}
	}
}

func TestCreatePassThrough(t *testing.T) {
	e := newEnv(t)
	for name, ann := range map[string]map[string]string{
		"no annotation": {annContainerType: "container", annContainerName: "app"},
		"sandbox":       restoreAnn("ck1", "sandbox"),
		"init container": func() map[string]string {
			a := restoreAnn("ck1", "container")
			a[annRestoreOnly] = "web,sidecar" // the restored ones; "app" here is an init container
			return a
		}(),
	} {
		e.config(ann)
		argv := e.createArgv("c1")
		code, _, stderr := e.run(argv...)
		if got := e.runcArgs(); code != 0 || !reflect.DeepEqual(got, argv) {
			t.Errorf("%s: code %d, runc got %q (%s)", name, code, got, stderr)
		}
	}
	if _, err := os.Stat(e.root); err == nil {
		t.Errorf("the hand-off root was touched by a pass-through create")
	}
}

func waitFor(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

func TestCreateRestores(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-1", "container"))
	os.WriteFile(filepath.Join(e.bundle, "rootfs", "etc", "stale"), []byte("x"), 0o644)
	staged := filepath.Join(e.dir, "staged") // laid out as the agent stages (in memory or beside the markers)
	images := filepath.Join(staged, "images")
	must(t, os.MkdirAll(images, 0o755))
	diff := filepath.Join(staged, "rootfs-diff.tar")
	must(t, os.WriteFile(diff, makeTar(t, []entry{{name: "data/counter", typ: tar.TypeReg, body: "7", mode: 0o644}}).Bytes(), 0o600))
	d := filepath.Join(e.root, "ck-1", "app")

	done := make(chan struct{})
	go func() {
		defer close(done)
		waitFor(t, filepath.Join(d, "waiting"))
		var w struct {
			ContainerID string `json:"container_id"`
			Since       string `json:"since"`
			PID         int    `json:"pid"`
		}
		b, _ := os.ReadFile(filepath.Join(d, "waiting"))
		if err := json.Unmarshal(b, &w); err != nil || w.ContainerID != "c1" || w.PID <= 0 || w.Since == "" {
			t.Errorf("waiting = %s (%v)", b, err)
		}
		ready, _ := json.Marshal(map[string]any{"images": images, "rootfs_diff": diff, "deleted_files": []string{"/etc/stale"}})
		writeJSONRaw(t, filepath.Join(d, "ready"), ready)
	}()
	code, out, stderr := e.run(e.createArgv("c1")...)
	<-done
	if code != 0 {
		t.Fatalf("create: code %d, stderr %s", code, stderr)
	}
	if out != "fake-runc-stdout\n" {
		t.Errorf("runc's stdout did not reach ours: %q", out)
	}
	want := []string{"--root", e.runcRoot, "--log", e.logPath, "--log-format", "json", "restore", "--detach",
		"--no-subreaper", "--bundle", e.bundle, "--pid-file", filepath.Join(e.bundle, "init.pid"),
		"--image-path", images, "--work-path", filepath.Join(d, "work"), "c1"}
	if got := e.runcArgs(); !reflect.DeepEqual(got, want) {
		t.Errorf("runc got\n %q\nwant\n %q", got, want)
	}
	if got := readFile(t, filepath.Join(e.bundle, "rootfs", "data", "counter")); got != "7" {
		t.Errorf("rootfs diff not applied: %q", got)
	}
	if _, err := os.Stat(filepath.Join(e.bundle, "rootfs", "etc", "stale")); err == nil {
		t.Errorf("deleted file still there")
	}
	if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("hand-off dir: %v %v", st, err)
	}
	var r struct {
		ContainerID string `json:"container_id"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(d, "restored"))), &r); err != nil || r.ContainerID != "c1" {
		t.Errorf("restored marker: %v %+v", err, r)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("the staged checkpoint (process memory) is still there after the restore: %v", err)
	}
	marker := filepath.Join(e.runcRoot, "c1", restoredMarker)
	waitFor(t, marker)

	// start: a no-op that consumes the marker; runc is not called
	code, _, stderr = e.run("--root", e.runcRoot, "start", "c1")
	if code != 0 || e.runcArgs() != nil {
		t.Errorf("start of a restored container: code %d (%s), runc called", code, stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("start marker not removed")
	}
	// a second start goes to runc
	e.run("--root", e.runcRoot, "start", "c1")
	if got := e.runcArgs(); !reflect.DeepEqual(got, []string{"--root", e.runcRoot, "start", "c1"}) {
		t.Errorf("second start: runc got %q", got)
	}
	// a restart of the restored container (same checkpoint, same name) is a plain create
	argv := e.createArgv("c2")
	if code, _, _ := e.run(argv...); code != 0 || !reflect.DeepEqual(e.runcArgs(), argv) {
		t.Errorf("restart was not passed through")
	}
}

func writeJSONRaw(t *testing.T, path string, b []byte) {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Error(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Error(err)
	}
}

type logLine struct {
	Level, Msg, Time string
}

func lastLogLine(t *testing.T, path string) logLine {
	lines := strings.Split(strings.TrimSpace(readFile(t, path)), "\n")
	var l logLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &l); err != nil {
		t.Fatalf("log line %q: %v", lines[len(lines)-1], err)
	}
	return l
}

func TestCreateAbort(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-2", "container"))
	must(t, os.WriteFile(e.logPath, []byte(`{"level":"info","msg":"earlier"}`+"\n"), 0o600))
	go func() {
		waitFor(t, filepath.Join(e.root, "ck-2", "app", "waiting"))
		os.WriteFile(filepath.Join(e.root, "ck-2", "abort"), []byte("source node lost\n"), 0o600)
	}()
	code, _, stderr := e.run(e.createArgv("c1")...)
	want := "lpm-runc: migration aborted: source node lost"
	if code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	if l := lastLogLine(t, e.logPath); l.Level != "error" || l.Msg != want || l.Time == "" {
		t.Errorf("log line %+v", l)
	}
	if e.runcArgs() != nil {
		t.Errorf("runc was called")
	}
}

func TestCreateTimeoutTextLog(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-3", "container"))
	e.extra = []string{"LPM_RUNC_WAIT_SECONDS=0.2"}
	logPath := filepath.Join(e.dir, "log.txt")
	t0 := time.Now()
	code, _, stderr := e.run("--root", e.runcRoot, "--log", logPath, "create", "--bundle", e.bundle, "c1")
	want := "lpm-runc: checkpoint ck-3 for container app was not ready within 0.2s"
	if code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	if dt := time.Since(t0); dt < 200*time.Millisecond || dt > 5*time.Second {
		t.Errorf("waited %v", dt)
	}
	if got := readFile(t, logPath); !strings.Contains(got, `level=error msg="`+want+`"`) {
		t.Errorf("text log %q", got)
	}
}

func TestCreateRejectsBadCheckpointID(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("../../etc", "container"))
	code, _, stderr := e.run(e.createArgv("c1")...)
	if code != 1 || !strings.Contains(stderr, "invalid lpm.my.domain/restore-checkpoint annotation") {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	if l := lastLogLine(t, e.logPath); l.Level != "error" || !strings.Contains(l.Msg, "../../etc") {
		t.Errorf("log line %+v", l)
	}
}

func TestCreateRestoreFailureKeepsRuncExitCode(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-4", "container"))
	e.extra = []string{"FAKE_RC=3"}
	d := filepath.Join(e.root, "ck-4", "app")
	must(t, os.MkdirAll(d, 0o700))
	ready, _ := json.Marshal(map[string]any{"images": e.dir})
	must(t, os.WriteFile(filepath.Join(d, "ready"), ready, 0o600))
	code, _, stderr := e.run(e.createArgv("c1")...)
	if code != 3 || !strings.Contains(stderr, "fake restore failed") {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(d, "restored")); err == nil {
		t.Errorf("restored written after a failed restore")
	}
	// CRIU's log is kept, and the restore is not tried again (kubelet retries the start).
	if got := readFile(t, filepath.Join(d, failedLog)); !strings.Contains(got, "boom") {
		t.Errorf("kept log %q", got)
	}
	e.runcArgs()
	code, _, _ = e.run(e.createArgv("c2")...)
	if got := e.runcArgs(); code != 1 || got != nil {
		t.Fatalf("second try: code %d, runc called with %q", code, got)
	}
	if l := lastLogLine(t, e.logPath); !strings.Contains(l.Msg, "failed before; not tried again") {
		t.Errorf("log %q", l.Msg)
	}
}

func TestCreateRejectsEscapingDiff(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-5", "container"))
	d := filepath.Join(e.root, "ck-5", "app")
	must(t, os.MkdirAll(d, 0o700))
	diff := filepath.Join(e.dir, "evil.tar")
	must(t, os.WriteFile(diff, makeTar(t, []entry{{name: "../evil", typ: tar.TypeReg, body: "x", mode: 0o644}}).Bytes(), 0o600))
	ready, _ := json.Marshal(map[string]any{"images": e.dir, "rootfs_diff": diff})
	must(t, os.WriteFile(filepath.Join(d, "ready"), ready, 0o600))
	code, _, stderr := e.run(e.createArgv("c1")...)
	if code != 1 || !strings.Contains(stderr, "escapes the rootfs") || e.runcArgs() != nil {
		t.Fatalf("code %d stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(e.bundle, "evil")); err == nil {
		t.Errorf("wrote outside the rootfs")
	}
}

func TestCreateInvalidReadyFailsAtOnce(t *testing.T) {
	e := newEnv(t)
	e.config(restoreAnn("ck-6", "container"))
	d := filepath.Join(e.root, "ck-6", "app")
	must(t, os.MkdirAll(d, 0o700))
	ready, _ := json.Marshal(map[string]any{"images": filepath.Join(e.dir, "missing")})
	must(t, os.WriteFile(filepath.Join(d, "ready"), ready, 0o600))
	t0 := time.Now()
	code, _, stderr := e.run(e.createArgv("c1")...)
	if code != 1 || !strings.Contains(stderr, "is not a directory") || time.Since(t0) > 5*time.Second {
		t.Fatalf("code %d stderr %q after %v", code, stderr, time.Since(t0))
	}
}
