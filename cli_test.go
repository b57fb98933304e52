package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
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
		{"bad timeout", []string{"-timeout=5", "true"}, `invalid value "5" for flag -timeout: expected a duration with a unit, such as 500ms, 10m`},
		{"bad command-timeout", []string{"-command-timeout=soon", "true"}, "such as 500ms, 10m"},
		{"try and its alias", []string{"-try=1m", "-timeout=1m", "true"}, "-timeout is an alias of -try"},
		{"boolean flag trap", []string{"-shell", "false", "echo x"}, `write -shell=false (as written, "false" would run as the command)`},
		{"boolean flag trap after run", []string{"run", "-pass-stdin", "true", "cat"}, "write -pass-stdin=true"},
		{"blank program", []string{"run", "", "x"}, "program to run, is blank"},
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
	for _, args := range [][]string{{"-h"}, {"run", "-h"}, {"register", "-h"}, {"exec", "-h"}, {"worker", "-h"}, {"status", "-h"}, {"forget", "-h"}} {
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
		{"flags and -json", []string{"-n=2", `-json={"name":"x"}`}, "-json carries a whole declaration"},
		{"-json and a command", []string{`-json={"name":"x"}`, "true"}, "-json carries a whole declaration"},
		{"-json and -policy", []string{`-json={"name":"x"}`, `-policy={}`, "true"}, "not both"},
		{"-policy as a separate argument", []string{"-policy", `{"n":2}`, "-name=x", "true"}, `write -policy and its value as one argument, (printf "-policy=%s" (key "..."))`},
		{"-policy with its value missing", []string{"-policy", "-name=x", "true"}, "write -policy and its value as one argument"},
		{"-json as a separate argument", []string{"--json", `{"name":"x"}`}, "write -json and its value as one argument"},
		{"-json with nothing after it", []string{"-json"}, "write -json and its value as one argument"},
		{"flags without a command", []string{"-strict", "-n=2", "-name=nginx"}, "missing command after -n -name"},
		{"-policy without a command", []string{"-name=nginx", `-policy={"n":2}`}, "missing command: -policy"},
		{"data after flags", []string{"-name=nginx", `{"n":2}`}, `the command "{\"n\":2}" is a JSON object: pass data as one -policy=VALUE`},
		{"boolean flag trap", []string{"-shell", "false", "echo x"}, "write -shell=false"},
		{"strict unknown key", []string{"-strict", "-allow-data-commands", `{"name":"x","command":"true","tyr":"1m"}`}, `"tyr"`},
		{"strict malformed", []string{"-strict", `{"name":"x",`}, "JSON"},
		{"strict empty command", []string{"-strict", "-allow-data-commands", `{"name":"x","command":""}`}, "missing command"},
		{"strict zero limit", []string{"-strict", "-allow-data-commands", `-json={"name":"x","command":"true","n":0}`}, "-n must be at least 1"},
		{"strict no name", []string{"-strict", "-allow-data-commands", `-json={"command":"true"}`}, `needs a "name"`},
		{"strict command from data", []string{"-strict", `-json={"name":"x","command":"id"}`}, "add -allow-data-commands to the register call, or move the command into the template"},
		{"strict bad policy", []string{"-strict", "-name=x", `-policy={"n":true}`, "true"}, "expected a number, got the boolean true"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			before := stateFile(t, dir)
			stdout, stderr, code := runCLI(append([]string{"register", sd}, tc.args...)...)
			if code != lockexec.ExitUsage {
				t.Fatalf("exit %d, want %d (stderr %q)", code, lockexec.ExitUsage, stderr)
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
	if code != 0 {
		t.Fatalf("status: exit %d %q", code, stderr)
	}
	if strings.Contains(stdout, `"name": "`) {
		t.Fatalf("a non-object value was registered as an action:\n%s", stdout)
	}
}

func TestRegisterBadDataKeepsLastGood(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	good := `{"name":"app","command":"systemctl restart app","n":"2","try":"5m"}`
	if _, stderr, code := runCLI("register", sd, "-allow-data-commands", "-json="+good); code != 0 || stderr != "" {
		t.Fatalf("good JSON: exit %d: %q", code, stderr)
	}
	stdout, stderr, code := runCLI("register", sd, "-allow-data-commands", `-json={"name":"app","command":"systemctl restart app","n":0}`)
	if code != 0 || stdout != "" {
		t.Fatalf("bad data must not fail the render: exit %d stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "warning") || !strings.Contains(stderr, `"app"`) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("want one warning line naming the declaration, got %q", stderr)
	}
	stdout, _, code = runCLI("status", sd, "-http-addr=127.0.0.1:1", "-json")
	if code != 0 || !strings.Contains(stdout, `-n must be at least 1`) || !strings.Contains(stdout, `"systemctl restart app"`) {
		t.Fatalf("status (exit %d) should show the rejected declaration and keep the good one:\n%s", code, stdout)
	}
}

// declared returns the declarations in the state directory dir.
func declared(t *testing.T, dir string) map[string]plugin.Declaration {
	t.Helper()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]plugin.Declaration{}
	for name, a := range st.Actions {
		m[name] = a.Declaration
	}
	return m
}

// rejections returns the recorded rejections of the state directory dir.
func rejections(t *testing.T, dir string) map[string]state.DeclError {
	t.Helper()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Errors
}

// KV data is never read as flags or as a command, whatever its value: the
// render goes on (exit 0), nothing reaches the rendered file but the
// template's own -output, no command from data is registered, and status
// shows the rejection (issue 14, item 3).
func TestRegisterDataIsNeverCode(t *testing.T) {
	values := []string{"-bogus", "-output=INJECTED", "id", "null", `["id"]`, `"id"`, "true", "{", `{"name":"x","command":"id"}`}
	for _, flagName := range []string{"json", "policy"} {
		for _, v := range values {
			t.Run(flagName+" "+v, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "state")
				args := []string{"register", "-state-dir=" + dir, "-output=# managed", "-" + flagName + "=" + v}
				if flagName == "policy" {
					args = append(args, "-name=web", "nginx -s reload")
				}
				stdout, stderr, code := runCLI(args...)
				if code != 0 || stdout != "# managed" {
					t.Fatalf("exit %d stdout %q stderr %q, want exit 0 and only the template's -output", code, stdout, stderr)
				}
				if !strings.Contains(stderr, "warning: ignoring declaration") || strings.Count(stderr, "\n") != 1 {
					t.Fatalf("want one warning line, got %q", stderr)
				}
				for name, d := range declared(t, dir) {
					t.Fatalf("data %q registered %q with command %q", v, name, d.Command)
				}
				if len(rejections(t, dir)) != 1 {
					t.Fatalf("the rejection was not recorded for status: %v", rejections(t, dir))
				}
			})
		}
	}
}

// Policy from data merged onto the template's command (issue 14): the
// template's values are the defaults, the policy's keys override them, a
// bad policy keeps the last good merged declaration, and an empty one
// (consul-template's pass before it has fetched the key) keeps the stored
// policy rather than reverting to the template's values for a moment.
func TestRegisterPolicy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	register := func(policy ...string) (string, int) {
		t.Helper()
		args := append([]string{"register", "-state-dir=" + dir, "-name=web", "-n=3", "-try=1m"}, policy...)
		_, stderr, code := runCLI(append(args, "nginx -s reload")...)
		return stderr, code
	}
	web := func() plugin.Declaration {
		t.Helper()
		d, ok := declared(t, dir)["web"]
		if !ok {
			t.Fatal("web is not registered")
		}
		return d
	}

	// Missing data on a node with nothing stored: the template's values.
	if stderr, code := register("-policy="); code != 0 || stderr != "" {
		t.Fatalf("missing policy: exit %d %q", code, stderr)
	}
	if d := web(); d.Limit != 3 || d.Try != time.Minute || d.Policy != "" {
		t.Fatalf("missing policy registered %+v, want the template's values", d)
	}

	if stderr, code := register(`-policy={"n": 2, "command_timeout": "30s"}`); code != 0 || stderr != "" {
		t.Fatalf("good policy: exit %d %q", code, stderr)
	}
	merged := web()
	if merged.Limit != 2 || merged.CommandTimeout != 30*time.Second || merged.Try != time.Minute ||
		!slices.Equal(merged.Command, []string{"nginx -s reload"}) || merged.Name != "web" {
		t.Fatalf("merged %+v: want n and command_timeout from the policy, the rest from the template", merged)
	}

	// The next start: the pass before the key is fetched keeps the policy.
	if stderr, code := register("-policy="); code != 0 || stderr != "" {
		t.Fatalf("missing policy: exit %d %q", code, stderr)
	}
	if d := web(); !d.Equal(merged) {
		t.Fatalf("a missing policy changed the declaration:\n got %+v\nwant %+v", d, merged)
	}

	// Bad policies: the render goes on with the last good merged one.
	for _, bad := range []string{`{"n": 0}`, `{"n": true}`, `{"name": "other"}`, `{"command": "id"}`, `{"tyr": "1m"}`, "id", "-bogus"} {
		stderr, code := register("-policy=" + bad)
		if code != 0 || !strings.Contains(stderr, `warning: ignoring declaration "web" from data`) {
			t.Fatalf("bad policy %s: exit %d stderr %q, want exit 0 and a warning", bad, code, stderr)
		}
		if d := web(); !d.Equal(merged) {
			t.Fatalf("bad policy %s changed the declaration to %+v", bad, d)
		}
		if e, ok := rejections(t, dir)["web"]; !ok || e.Message == "" {
			t.Fatalf("bad policy %s: no rejection recorded for status", bad)
		}
	}

	// A good policy clears the rejection; {} brings the template's values back.
	if stderr, code := register(`-policy={}`); code != 0 || stderr != "" {
		t.Fatalf("empty policy: exit %d %q", code, stderr)
	}
	if d := web(); d.Limit != 3 || d.CommandTimeout != 0 {
		t.Fatalf("{} left %+v, want the template's values", d)
	}
	if _, ok := rejections(t, dir)["web"]; ok {
		t.Fatal("a good policy did not clear the rejection")
	}

	// A command from the policy only with the template's opt-in.
	if stderr, code := register("-allow-data-commands", `-policy={"command": ["systemctl", "reload", "nginx"]}`); code != 0 || stderr != "" {
		t.Fatalf("policy command with opt-in: exit %d %q", code, stderr)
	}
	if d := web(); !slices.Equal(d.Command, []string{"systemctl", "reload", "nginx"}) || d.Shell {
		t.Fatalf("policy command with opt-in: %+v", d)
	}
}

// A whole declaration from data may carry a command only with the
// template's -allow-data-commands; otherwise it is rejected under the
// never-crash rules with a warning saying what to do (issue 14, item 1).
func TestRegisterJSONCommandNeedsOptIn(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	decl := `{"name":"app","command":"systemctl restart app","n":2}`

	for _, args := range [][]string{{"-json=" + decl}, {decl}} {
		stdout, stderr, code := runCLI(append([]string{"register", sd}, args...)...)
		if code != 0 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.Contains(stderr, "add -allow-data-commands to the register call, or move the command into the template") {
			t.Fatalf("register %q: exit %d stdout %q stderr %q, want exit 0 and one warning naming the fix", args, code, stdout, stderr)
		}
		if len(declared(t, dir)) != 0 {
			t.Fatalf("register %q registered a command from data without the opt-in", args)
		}
		if e := rejections(t, dir)["app"]; !strings.Contains(e.Message, "-allow-data-commands") {
			t.Fatalf("status would not show the rejection: %+v", rejections(t, dir))
		}
	}

	// With the opt-in: -json silently, the bare form with a deprecation.
	if _, stderr, code := runCLI("register", sd, "-allow-data-commands", "-json="+decl); code != 0 || stderr != "" {
		t.Fatalf("-json with the opt-in: exit %d %q", code, stderr)
	}
	if d := declared(t, dir)["app"]; d.Limit != 2 || !slices.Equal(d.Command, []string{"systemctl restart app"}) {
		t.Fatalf("-json registered %+v", d)
	}
	if _, ok := rejections(t, dir)["app"]; ok {
		t.Fatal("a good declaration did not clear the rejection")
	}
	_, stderr, code := runCLI("register", sd, "-allow-data-commands", decl)
	if code != 0 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "deprecated") || !strings.Contains(stderr, `(printf "-json=%s"`) {
		t.Fatalf("bare JSON: exit %d stderr %q, want one deprecation line", code, stderr)
	}

	// Missing data: an empty -json is a no-op.
	before := stateFile(t, dir)
	for _, args := range [][]string{{"-json="}, {"-json= "}, {"-allow-data-commands", "-json="}, {"-allow-data-commands"}} {
		if stdout, stderr, code := runCLI(append([]string{"register", sd}, args...)...); code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("register %q: exit %d %q %q, want a silent no-op", args, code, stdout, stderr)
		}
	}
	if !bytes.Equal(before, stateFile(t, dir)) {
		t.Fatal("missing data changed the state")
	}
}

// A command written after flags is code, whatever it looks like; only a
// lone argument with no declaration flag is ever read as data (issue 15).
func TestRegisterCommandAfterFlagsIsCode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	for _, command := range []string{
		"[ -x /usr/sbin/nginx ] && nginx -s reload",
		"nginx -t\nnginx -s reload",
		`{ nginx -t && nginx -s reload; }`,
		`"quoted" start`,
	} {
		_, stderr, code := runCLI("register", "-state-dir="+dir, "-name=web", command)
		if code != 0 || stderr != "" {
			t.Fatalf("register -name=web %q: exit %d %q", command, code, stderr)
		}
		if d := declared(t, dir)["web"]; !slices.Equal(d.Command, []string{command}) {
			t.Fatalf("register -name=web %q declared %q", command, d.Command)
		}
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
	if err := os.Mkdir(filepath.Join(open, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	symlinked := filepath.Join(t.TempDir(), "state")
	if err := os.Symlink(t.TempDir(), symlinked); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"worker argument", []string{"worker", "now"}, lockexec.ExitUsage, `unexpected argument "now"`},
		{"worker no tracks", []string{"worker", "-max-parallel=0"}, lockexec.ExitUsage, "-max-parallel must be at least 1, got 0"},
		{"worker negative grace", []string{"worker", "-stop-grace=-1s"}, lockexec.ExitUsage, "-stop-grace must not be negative, got -1s"},
		{"status two names", []string{"status", "-state-dir=" + t.TempDir(), "a", "b"}, lockexec.ExitUsage, `unexpected argument "b"`},
		{"status unknown name", []string{"status", "-state-dir=" + t.TempDir(), "nginx"}, ExitError, `no action nginx is declared in`},
		{"status symlinked dir", []string{"status", "-state-dir=" + symlinked}, ExitError, "a symbolic link"},
		{"status dir under an open parent", []string{"status", "-state-dir=" + filepath.Join(open, "state")}, ExitError, "writable by its group or by others"},
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

// A mistyped subcommand is an error, never a command run under a lock
// (issue 15, item 1). The closed port proves nothing reached Consul: an
// attempt would exit 69, not 64.
func TestMistypedSubcommand(t *testing.T) {
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:"+itoa(port))
	cases := []struct{ word, want string }{
		{"stauts", "status"}, {"exce", "exec"}, {"stat", "status"}, {"regster", "register"},
		{"wroker", "worker"}, {"versoin", "version"}, {"Status", "status"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runCLI(tc.word, "nginx")
		if code != lockexec.ExitUsage || stdout != "" {
			t.Fatalf("%s: exit %d stdout %q stderr %q, want exit 64", tc.word, code, stdout, stderr)
		}
		want := `ct-supervise: unknown subcommand "` + tc.word + `"; did you mean "` + tc.want +
			`"? To run a command of that name: ct-supervise run ` + tc.word
		oneErrorLine(t, stderr, want)
	}
	// Words that are no typo reach run (and Consul: exit 69), as do paths
	// and command lines.
	for _, args := range [][]string{{"nginx"}, {"systemctl", "reload"}, {"/usr/bin/stat"}, {"stat -c %s x"}, {"run", "stat"}} {
		if _, stderr, code := runCLI(args...); code != lockexec.ExitConsulUnreachable {
			t.Fatalf("%q: exit %d %q, want it run (69, Consul unreachable)", args, code, stderr)
		}
	}
}

func TestEditDistance(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"status", "status", 0}, {"stauts", "status", 1}, {"stat", "status", 2}, {"exce", "exec", 1},
		{"", "run", 3}, {"nginx", "run", 4}, {"ab", "ba", 1}, {"kitten", "sitting", 3},
	}
	for _, tc := range cases {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// Consul settings that make no client, such as a CA file that cannot be
// read, are a configuration error: exit 78 naming the file, no usage hint,
// and a worker records why it could not start for status.
func TestBadCAFileIsAConfigError(t *testing.T) {
	t.Setenv("CONSUL_CACERT", "/nonexistent/ca.pem")
	dir := filepath.Join(t.TempDir(), "state")
	for _, args := range [][]string{
		{"run", "-http-addr=127.0.0.1:1", "true"},
		{"worker", "-state-dir=" + dir},
	} {
		_, stderr, code := runCLI(args...)
		if code != lockexec.ExitConfig || !strings.Contains(stderr, "/nonexistent/ca.pem") || strings.Contains(stderr, "-h' for usage") {
			t.Errorf("%v: exit %d stderr %q, want %d naming the CA file and no usage hint", args, code, stderr, lockexec.ExitConfig)
		}
	}
	stdout, stderr, code := runCLI("status", "-state-dir="+dir, "-json")
	if code != 0 || !strings.Contains(stdout, `"worker_failure"`) || !strings.Contains(stdout, "/nonexistent/ca.pem") {
		t.Fatalf("status -json: exit %d stderr %q, want the worker's failure:\n%s", code, stderr, stdout)
	}
}

// A worker that cannot open its log records why for status.
func TestWorkerWithoutItsLogSaysWhy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, _, code := runCLI("register", "-state-dir="+dir, "-name=x", "true"); code != 0 {
		t.Fatal("register failed")
	}
	if err := os.Mkdir(filepath.Join(dir, WorkerLogFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI("worker", "-state-dir="+dir); code != ExitError || !strings.Contains(stderr, "opening the log") {
		t.Fatalf("worker: exit %d stderr %q, want %d and the log named", code, stderr, ExitError)
	}
	stdout, _, code := runCLI("status", "-state-dir="+dir, "-json")
	if code != 0 || !strings.Contains(stdout, `"worker_failure"`) || !strings.Contains(stdout, "opening the log") {
		t.Fatalf("status -json (exit %d) does not show why the worker failed:\n%s", code, stdout)
	}
}
