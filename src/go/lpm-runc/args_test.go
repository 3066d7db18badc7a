package main

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestParseGlobal(t *testing.T) {
	cases := []struct {
		argv              []string
		cmd, root, log, f string
		nGlobal           int
	}{
		{[]string{"--version"}, "", defaultRuncRoot, "", "", 1},
		{[]string{"state", "x"}, "state", defaultRuncRoot, "", "", 0},
		{[]string{"--root", "/r", "--log", "/l.json", "--log-format", "json", "--systemd-cgroup", "create", "--bundle", "b", "id"},
			"create", "/r", "/l.json", "json", 7},
		{[]string{"--root=/r", "--debug", "-log=/l", "--criu", "/c", "--rootless", "false", "start", "id"},
			"start", "/r", "/l", "", 7},
		{[]string{"-root", "/x", "-v"}, "", "/x", "", "", 3},
	}
	for _, c := range cases {
		inv := parseGlobal(c.argv)
		if inv.cmd != c.cmd || inv.root != c.root || inv.log != c.log || inv.logFormat != c.f || len(inv.global) != c.nGlobal {
			t.Errorf("parseGlobal(%q) = %+v", c.argv, inv)
		}
		if c.cmd != "" && !reflect.DeepEqual(inv.args, c.argv[c.nGlobal+1:]) {
			t.Errorf("parseGlobal(%q).args = %q", c.argv, inv.args)
		}
	}
}

func TestParseCreateAndRestoreArgv(t *testing.T) {
	global := []string{"--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json"}
	cases := []struct {
		args []string
		want []string
	}{
		{ // what containerd's shim passes
			[]string{"--bundle", "/b", "--pid-file", "/b/init.pid", "--no-new-keyring", "--preserve-fds", "2", "ctr1"},
			[]string{"restore", "--detach", "--no-subreaper", "--bundle", "/b", "--pid-file", "/b/init.pid",
				"--image-path", "/img", "--work-path", "/w", "ctr1"},
		},
		{
			[]string{"-b=/b", "--pid-file=/p", "--console-socket=/s.sock", "--no-pivot", "--preserve-fds=3", "ctr2"},
			[]string{"restore", "--detach", "--no-subreaper", "--bundle", "/b", "--pid-file", "/p",
				"--console-socket", "/s.sock", "--no-pivot", "--image-path", "/img", "--work-path", "/w", "ctr2"},
		},
		{
			[]string{"--no-pivot=false", "ctr3"},
			[]string{"restore", "--detach", "--no-subreaper", "--bundle", ".", "--image-path", "/img",
				"--work-path", "/w", "ctr3"},
		},
	}
	for _, c := range cases {
		ca, err := parseCreate(c.args)
		if err != nil {
			t.Fatalf("parseCreate(%q): %v", c.args, err)
		}
		got := restoreArgv(global, ca, "/img", "/w")
		want := append(append([]string{}, global...), c.want...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("restoreArgv for %q:\n got %q\nwant %q", c.args, got, want)
		}
	}
}

func TestParseCreateErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--bundle"},               // missing value
		{"--detach", "id"},         // not a create flag
		{"--bundle", "/b"},         // no id
		{"a", "b"},                 // two ids
		{"--no-pivot=maybe", "id"}, // bad boolean
	} {
		_, err := parseCreate(args)
		if err == nil {
			t.Errorf("parseCreate(%q) accepted", args)
		}
	}
}

func TestStartID(t *testing.T) {
	if id := startID([]string{"abc"}); id != "abc" {
		t.Errorf("got %q", id)
	}
	if id := startID([]string{"a", "b"}); id != "" {
		t.Errorf("got %q", id)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "../x"} {
		if validStateID(bad) {
			t.Errorf("validStateID(%q)", bad)
		}
	}
}

func TestCheckpointIDPattern(t *testing.T) {
	re := regexp.MustCompile(namePattern) // the hand-written check agrees with the pattern
	for _, ok := range []string{"a", "ckpt-1.2_3", "0" + strings.Repeat("a", 252)} {
		if !validName(ok) || !re.MatchString(ok) {
			t.Errorf("rejected %q", ok)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a/b", "..", ".a", "a b", "a/", "é", "a\n", "0" + strings.Repeat("a", 253)} {
		if validName(bad) || re.MatchString(bad) {
			t.Errorf("accepted %q", bad)
		}
	}
}
