package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

// runCLI runs the CLI in-process with captured streams.
func runCLI(args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	code = NewCLI(&out, &errb, strings.NewReader("")).Run(args)
	return out.String(), errb.String(), code
}

// oneErrorLine checks the contract for bad input: the first stderr line
// names the problem, at most a usage hint follows.
func oneErrorLine(t *testing.T, stderr, want string) {
	t.Helper()
	ls := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(ls) == 0 || !strings.Contains(ls[0], want) {
		t.Fatalf("stderr %q: first line should contain %q", stderr, want)
	}
	if len(ls) > 2 || (len(ls) == 2 && !strings.HasPrefix(ls[1], "Run 'ct-supervise")) {
		t.Fatalf("stderr should be one error line and the usage hint, got:\n%s", stderr)
	}
}

func TestRunBadUsage(t *testing.T) {
	// Pointing at a closed port proves that bad usage is caught before any
	// attempt to reach Consul.
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:"+itoa(port))
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-bogus", "true"}, "flag provided but not defined: -bogus"},
		{"unknown flag after run", []string{"run", "-nn=2", "true"}, "flag provided but not defined: -nn"},
		{"missing command", []string{"run", "-n", "2"}, "missing command"},
		{"missing command, no flags", []string{"run"}, "missing command"},
		{"zero limit", []string{"-n", "0", "true"}, "-n must be at least 1"},
		{"negative limit", []string{"-n=-3", "true"}, "-n must be at least 1"},
		{"bad duration", []string{"-try", "soon", "true"}, "-try"},
		{"bad timeout", []string{"-timeout=5", "true"}, "-timeout"},
		{"bad name", []string{"-name", "no spaces please", "true"}, "name"},
		{"absolute prefix", []string{"-prefix", "/locks/x", "true"}, "prefix"},
		{"register-only flag", []string{"-max-attempts=3", "true"}, "flag provided but not defined: -max-attempts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(tc.args...)
			if code != lockexec.ExitUsage {
				t.Fatalf("exit %d, want %d (stderr %q)", code, lockexec.ExitUsage, stderr)
			}
			if stdout != "" {
				t.Fatalf("stdout %q, want nothing", stdout)
			}
			oneErrorLine(t, stderr, tc.want)
		})
	}
}

func TestRunConsulUnreachable(t *testing.T) {
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runCLI("run", "-http-addr", "127.0.0.1:"+itoa(port), "echo should not run")
	if code != lockexec.ExitConsulUnreachable {
		t.Fatalf("exit %d, want %d (stderr %q)", code, lockexec.ExitConsulUnreachable, stderr)
	}
	oneErrorLine(t, stderr, "consul unreachable")
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"run", "-h"}, {"register", "-h"}, {"exec", "-h"}, {"worker", "-h"}, {"status", "-h"}} {
		stdout, stderr, code := runCLI(args...)
		if code != 0 || !strings.Contains(stdout, "Usage: ct-supervise") || stderr != "" {
			t.Errorf("%v: exit %d stdout %q stderr %q", args, code, stdout, stderr)
		}
	}
	if stdout, _, code := runCLI("version"); code != 0 || !strings.HasPrefix(stdout, "ct-supervise v") {
		t.Errorf("version: exit %d stdout %q", code, stdout)
	}
	if _, stderr, code := runCLI(); code != lockexec.ExitUsage || !strings.Contains(stderr, "Usage:") {
		t.Errorf("no args: exit %d stderr %q", code, stderr)
	}
}

// stateFile returns the state file's bytes, nil if absent.
func stateFile(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

func TestRegister(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir

	// Declarations in the template are code: a bad one fails the render
	// with one line naming the problem, and writes nothing.
	bad := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-nme=x", "true"}, "flag provided but not defined: -nme"},
		{"zero limit", []string{"-n=0", "true"}, "-n must be at least 1"},
		{"bad duration", []string{"-try=10", "true"}, "-try"},
		{"flags and JSON", []string{"-n=2", `{"name":"x","command":"true"}`}, "either flags"},
		{"strict unknown key", []string{"-strict", `{"name":"x","command":"true","tyr":"1m"}`}, `"tyr"`},
		{"strict malformed", []string{"-strict", `{"name":"x",`}, "JSON"},
		{"strict empty command", []string{"-strict", `{"name":"x","command":""}`}, "missing command"},
		{"strict zero limit", []string{"-strict", `{"name":"x","command":"true","n":0}`}, "-n must be at least 1"},
		{"strict no name", []string{"-strict", `{"command":"true"}`}, `needs a "name"`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			before := stateFile(t, dir)
			stdout, stderr, code := runCLI(append([]string{"register", sd}, tc.args...)...)
			if code == 0 {
				t.Fatalf("exit 0, want failure (stderr %q)", stderr)
			}
			if stdout != "" {
				t.Fatalf("stdout %q: register must print nothing", stdout)
			}
			oneErrorLine(t, stderr, tc.want)
			after := stateFile(t, dir)
			if tc.args[0] != "-strict" && !bytes.Equal(before, after) {
				t.Fatalf("state changed by a rejected declaration")
			}
		})
	}

	// A good declaration, then the same again: no output, same state.
	stdout, stderr, code := runCLI("register", sd, "-n=2", "-name=nginx", "-try=10m", "nginx -s reload")
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("register: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	first := stateFile(t, dir)
	if _, _, code := runCLI("register", sd, "-n=2", "-name=nginx", "-try=10m", "nginx -s reload"); code != 0 {
		t.Fatal("second register failed")
	}
	if !bytes.Equal(first, stateFile(t, dir)) {
		t.Fatal("registering the same declaration again changed the state")
	}

	// Missing data: consul-template drops empty arguments.
	for _, args := range [][]string{{}, {""}, {"   "}} {
		stdout, stderr, code := runCLI(append([]string{"register", sd}, args...)...)
		if code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("register %q: exit %d stdout %q stderr %q, want a silent no-op", args, code, stdout, stderr)
		}
	}
	if !bytes.Equal(first, stateFile(t, dir)) {
		t.Fatal("a register without a declaration changed the state")
	}

	// -output prints exactly the marker.
	if stdout, _, code := runCLI("register", sd, "-output=# managed", "-name=nginx", "-n=2", "-try=10m", "nginx -s reload"); code != 0 || stdout != "# managed" {
		t.Fatalf("-output: exit %d stdout %q", code, stdout)
	}
}

// A KV value that is not a JSON object is bad data, never a command line
// to run on every node.
func TestRegisterNonObjectDataIsRejected(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	for _, data := range []string{`["rm","-rf","/"]`, `"nginx -s reload"`, "name: nginx\ncommand: nginx -s reload"} {
		stdout, stderr, code := runCLI("register", "-state-dir="+dir, data)
		if code != 0 || stdout != "" || !strings.Contains(stderr, "warning: ignoring declaration from data") {
			t.Fatalf("register %q: exit %d stdout %q stderr %q, want a warning and exit 0", data, code, stdout, stderr)
		}
		if _, stderr, code := runCLI("register", "-strict", "-state-dir="+dir, data); code == 0 {
			t.Fatalf("register -strict %q: exit 0 (%q), want a failure", data, stderr)
		}
	}
	stdout, stderr, code := runCLI("status", "-state-dir="+dir, "-http-addr=127.0.0.1:1", "-json")
	var st struct {
		Actions []any `json:"actions"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil {
		t.Fatalf("status: exit %d stderr %q stdout %q", code, stderr, stdout)
	}
	if len(st.Actions) != 0 {
		t.Fatalf("a non-object value was registered as an action:\n%s", stdout)
	}
}

func TestRegisterBadDataKeepsLastGood(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	good := `{"name":"app","command":"systemctl restart app","n":"2","try":"5m"}`
	if _, stderr, code := runCLI("register", sd, good); code != 0 {
		t.Fatalf("good JSON: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := runCLI("register", sd, `{"name":"app","command":"systemctl restart app","n":0}`)
	if code != 0 || stdout != "" {
		t.Fatalf("bad data must not fail the render: exit %d stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "warning") || !strings.Contains(stderr, `"app"`) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("want one warning line naming the declaration, got %q", stderr)
	}
	stdout, stderr, code = runCLI("status", sd, "-http-addr=127.0.0.1:1", "-json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, `-n must be at least 1`) || !strings.Contains(stdout, `"systemctl restart app"`) {
		t.Fatalf("status should show the rejected declaration and keep the good one:\n%s", stdout)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// exec must not take consul-template down over a name that the render did
// not register. (Only cases that queue nothing run in-process: anything
// queued would start this test binary as the worker.)
func TestExecUnknownName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	stdout, stderr, code := runCLI("exec", sd, "nginx")
	if code != 0 || stdout != "" || !strings.Contains(stderr, `warning: no action "nginx" is registered`) {
		t.Fatalf("exec unknown: exit %d stdout %q stderr %q, want 0 and a warning", code, stdout, stderr)
	}
	for _, args := range [][]string{{"-strict", "nginx"}, {"-wait", "nginx"}} {
		_, stderr, code := runCLI(append([]string{"exec", sd}, args...)...)
		if code == 0 || !strings.Contains(stderr, `unknown action "nginx"`) {
			t.Fatalf("exec %v: exit %d stderr %q, want a failure naming the action", args, code, stderr)
		}
	}
	if _, stderr, code := runCLI("exec", sd, "-wait-timeout=-1s"); code != lockexec.ExitUsage {
		t.Fatalf("negative -wait-timeout: exit %d %q", code, stderr)
	}
	// Nothing pending: a no-op.
	if stdout, stderr, code := runCLI("exec", sd); code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("exec with nothing pending: exit %d %q %q", code, stdout, stderr)
	}
}

func TestSubcommandBadInput(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"worker argument", []string{"worker", "now"}, lockexec.ExitUsage, `unexpected argument "now"`},
		{"status argument", []string{"status", "all"}, lockexec.ExitUsage, `unexpected argument "all"`},
		{"exec unknown flag", []string{"exec", "-quick"}, lockexec.ExitUsage, "flag provided but not defined: -quick"},
		{"status unsafe dir", []string{"status", "-state-dir=" + open}, ExitError, "unsafe state directory"},
		{"register unsafe dir", []string{"register", "-state-dir=" + open, "-name=x", "true"}, ExitError, "unsafe state directory"},
		{"exec unsafe dir", []string{"exec", "-state-dir=" + open}, ExitError, "unsafe state directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(tc.args...)
			if code != tc.code || stdout != "" {
				t.Fatalf("exit %d stdout %q stderr %q, want exit %d", code, stdout, stderr, tc.code)
			}
			oneErrorLine(t, stderr, tc.want)
		})
	}
	if _, err := os.Stat(filepath.Join(open, "state.json")); err == nil {
		t.Fatal("something was written to an unsafe state directory")
	}
}
