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
		got := restoreArgv(global, ca, "/img", "/w", false)
		want := append(append([]string{}, global...), c.want...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("restoreArgv for %q:\n got %q\nwant %q", c.args, got, want)
		}
	}
	ca, _ := parseCreate([]string{"--bundle", "/b", "ctr4"})
	want := []string{"restore", "--detach", "--no-subreaper", "--bundle", "/b", "--lazy-pages", "--image-path",
		"/img", "--work-path", "/w", "ctr4"}
	if got := restoreArgv(nil, ca, "/img", "/w", true); !reflect.DeepEqual(got, want) {
		t.Errorf("lazy restoreArgv:\n got %q\nwant %q", got, want)
	}
}

func TestLazyCheckpointArgs(t *testing.T) {
	lazy := []string{"--lazy-pages", "--page-server", "127.0.0.1:7000", "--status-fd", "3"}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, c := range []struct {
		args, want []string
		image      string
	}{
		{ // what containerd's shim passes
			[]string{"--image-path", "/i", "--work-path", "/w", "--leave-running", "--tcp-established", "c1"},
			cat([]string{"--image-path", "/i", "--work-path", "/w", "--leave-running", "--tcp-established"}, lazy, []string{"c1"}),
			"/i",
		},
		{
			[]string{"--file-locks", "--image-path=/j", "--manage-cgroups-mode", "soft", "--empty-ns", "network", "-shell-job", "c2"},
			cat([]string{"--file-locks", "--image-path=/j", "--manage-cgroups-mode", "soft", "--empty-ns", "network", "-shell-job"}, lazy, []string{"c2"}),
			"/j",
		},
		{[]string{"--image-path", "/k", "--", "c3"}, cat([]string{"--image-path", "/k"}, lazy, []string{"--", "c3"}), "/k"},
		{[]string{"--work-path", "/w", "c4"}, cat([]string{"--work-path", "/w"}, lazy, []string{"c4"}), ""},
		{[]string{"c5", "--image-path", "/late"}, cat(lazy, []string{"c5", "--image-path", "/late"}), ""}, // after the id: an argument
	} {
		if image, _, _ := scanCheckpoint(c.args); image != c.image {
			t.Errorf("scanCheckpoint(%q): image %q, want %q", c.args, image, c.image)
		}
		got, err := lazyCheckpointArgs(c.args, "127.0.0.1:7000")
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("lazyCheckpointArgs(%q):\n got %q (%v)\nwant %q", c.args, got, err, c.want)
		}
	}
	for _, args := range [][]string{
		{"--image-path", "/i", "--lazy-pages", "c1"},
		{"--page-server=1.2.3.4:5", "c1"},
		{"--status-fd", "4", "c1"},
	} {
		if _, err := lazyCheckpointArgs(args, "127.0.0.1:7000"); err == nil {
			t.Errorf("lazyCheckpointArgs(%q) accepted flags it sets itself", args)
		}
	}
}

func TestValidHostPort(t *testing.T) {
	for _, s := range []string{"127.0.0.1:1", "localhost:65535", "[::1]:7000"} {
		if err := validHostPort(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "127.0.0.1", ":7000", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
		"127.0.0.1:+80", "127.0.0.1:8o", "::1:7000", "a b:1"} {
		if err := validHostPort(s); err == nil {
			t.Errorf("%q accepted", s)
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
