package main

import (
	"fmt"
	"strings"
)

// Global runc flags that take a value (runc 1.1.5 `runc --help`). Every other global flag is boolean:
// --debug, --systemd-cgroup, --help/-h, --version/-v.
var globalValueFlags = map[string]bool{"root": true, "log": true, "log-format": true, "criu": true, "rootless": true}

const defaultRuncRoot = "/run/runc"

// invocation is runc's command line split at the command: global flags, the command, its arguments.
type invocation struct {
	global    []string // the raw global flags (and their values) that preceded the command
	cmd       string   // "" when there is none (e.g. `runc --version`)
	args      []string // everything after the command
	root      string   // --root, default /run/runc
	log       string   // --log, "" when not given
	logFormat string   // --log-format, "" when not given
}

// flagName returns the name of a flag argument ("--root=x" -> "root", "x", true) the way urfave/cli reads
// it: one or two dashes, value either inline after '=' or in the next argument.
func flagName(arg string) (name, value string, inline bool) {
	name = strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		return name[:i], name[i+1:], true
	}
	return name, "", false
}

// parseGlobal finds the command. It allocates nothing but the struct: the pass-through only needs cmd.
func parseGlobal(argv []string) invocation {
	inv := invocation{root: defaultRuncRoot}
	i := 0
	for i < len(argv) {
		a := argv[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		name, value, inline := flagName(a)
		i++
		if globalValueFlags[name] && !inline {
			if i < len(argv) {
				value = argv[i]
				i++
			}
		}
		switch name {
		case "root":
			inv.root = value
		case "log":
			inv.log = value
		case "log-format":
			inv.logFormat = value
		}
	}
	inv.global = argv[:i]
	if i < len(argv) {
		inv.cmd = argv[i]
		inv.args = argv[i+1:]
	}
	return inv
}

// createArgs are the arguments of `runc create` (runc 1.1.5 `runc create --help`).
type createArgs struct {
	id            string
	bundle        string
	pidFile       string
	consoleSocket string
	noPivot       bool
}

func boolValue(name, value string, inline bool) (bool, error) {
	if !inline {
		return true, nil
	}
	switch value {
	case "true", "1", "t", "T", "TRUE", "True":
		return true, nil
	case "false", "0", "f", "F", "FALSE", "False":
		return false, nil
	}
	return false, fmt.Errorf("invalid value %q for flag --%s", value, name)
}

// parseCreate reads create's flags. --no-new-keyring and --preserve-fds are accepted and dropped: restore has
// neither.
func parseCreate(args []string) (createArgs, error) {
	c := createArgs{bundle: "."}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name, value, inline := flagName(a)
		switch name {
		case "bundle", "b", "pid-file", "console-socket", "preserve-fds":
			if !inline {
				if i+1 >= len(args) {
					return c, fmt.Errorf("flag --%s needs a value", name)
				}
				i++
				value = args[i]
			}
			switch name {
			case "bundle", "b":
				c.bundle = value
			case "pid-file":
				c.pidFile = value
			case "console-socket":
				c.consoleSocket = value
			}
		case "no-pivot":
			v, err := boolValue(name, value, inline)
			if err != nil {
				return c, err
			}
			c.noPivot = v
		case "no-new-keyring":
			if _, err := boolValue(name, value, inline); err != nil {
				return c, err
			}
		default:
			return c, fmt.Errorf("unsupported create flag %q", a)
		}
	}
	if len(pos) != 1 {
		return c, fmt.Errorf("create needs exactly one container id, got %q", pos)
	}
	c.id = pos[0]
	return c, nil
}

// restoreArgv is the real runc's argv (without argv[0]) that restores the container instead of creating it.
// lazy: post-copy, the memory comes from the `criu lazy-pages` daemon that runs with the same work dir.
func restoreArgv(global []string, c createArgs, images, workDir string, lazy bool) []string {
	argv := append([]string{}, global...)
	argv = append(argv, "restore", "--detach", "--no-subreaper", "--bundle", c.bundle)
	if c.pidFile != "" {
		argv = append(argv, "--pid-file", c.pidFile)
	}
	if c.consoleSocket != "" {
		argv = append(argv, "--console-socket", c.consoleSocket)
	}
	if c.noPivot {
		argv = append(argv, "--no-pivot")
	}
	if lazy {
		argv = append(argv, "--lazy-pages")
	}
	return append(argv, "--image-path", images, "--work-path", workDir, c.id)
}

// checkpointValueFlag tells the flags of `runc checkpoint` that take a value (runc 1.1.5 `runc checkpoint
// --help`); every other one is boolean. A switch, not a map: nothing to build at start-up.
func checkpointValueFlag(name string) bool {
	switch name {
	case "image-path", "work-path", "parent-path", "status-fd", "page-server", "manage-cgroups-mode", "empty-ns":
		return true
	}
	return false
}

// scanCheckpoint walks checkpoint's flags up to the container id. It returns the --image-path value ("" when
// there is none; the last one wins, as in runc), the index of the first argument that is not a flag (the id, or
// "--"; len(args) when there is none) and whether a flag that post-copy sets itself (--lazy-pages, --page-server,
// --status-fd) is there already. It allocates nothing: every checkpoint goes through it.
func scanCheckpoint(args []string) (image string, idIndex int, lazyFlag bool) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" || len(a) < 2 || a[0] != '-' {
			break
		}
		name, value, inline := flagName(a)
		i++
		if checkpointValueFlag(name) && !inline && i < len(args) {
			value = args[i]
			i++
		}
		switch name {
		case "image-path":
			image = value
		case "lazy-pages", "page-server", "status-fd":
			lazyFlag = true
		}
	}
	return image, i, lazyFlag
}

// lazyCheckpointArgs inserts `--lazy-pages --page-server <pageServer> --status-fd 3` into checkpoint's arguments,
// before the container id.
func lazyCheckpointArgs(args []string, pageServer string) ([]string, error) {
	_, at, lazyFlag := scanCheckpoint(args)
	if lazyFlag {
		return nil, fmt.Errorf("the checkpoint request sets --lazy-pages, --page-server or --status-fd itself")
	}
	out := make([]string, 0, len(args)+5)
	out = append(out, args[:at]...)
	out = append(out, "--lazy-pages", "--page-server", pageServer, "--status-fd", "3")
	return append(out, args[at:]...), nil
}

// validHostPort checks host:port with a non-empty host and a numeric port in 1..65535 (an IPv6 host in
// brackets), as runc's --page-server wants it. By hand: package net would cost every start-up.
func validHostPort(s string) error {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return fmt.Errorf("page_server %q is not host:port", s)
	}
	host, port := s[:i], s[i+1:]
	if strings.IndexByte(host, ':') >= 0 && (host[0] != '[' || host[len(host)-1] != ']' || len(host) < 3) {
		return fmt.Errorf("page_server %q: an IPv6 host needs brackets", s)
	}
	if strings.ContainsAny(host, " \t\n") {
		return fmt.Errorf("page_server %q: invalid host", s)
	}
	if !validPort(port) {
		return fmt.Errorf("page_server %q: the port is not a number in 1..65535", s)
	}
	return nil
}

func validPort(s string) bool {
	if len(s) == 0 || len(s) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n >= 1 && n <= 65535
}

// startID returns the container id of `runc start [flags] <id>`, "" if there is not exactly one.
func startID(args []string) string {
	id := ""
	for _, a := range args {
		if len(a) > 1 && a[0] == '-' {
			continue // start has only --help
		}
		if id != "" {
			return ""
		}
		id = a
	}
	return id
}
