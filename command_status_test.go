package main

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
	"ct-supervise/state"
)

// startAgent starts a dev agent for one test, stopped when the test ends.
func startAgent(t *testing.T, opts devconsul.Options) *devconsul.Agent {
	t.Helper()
	a, err := devconsul.Start(opts)
	if err != nil {
		devconsul.MissingOrFatal(t, err)
	}
	t.Cleanup(a.Stop)
	return a
}

// statusJSON runs status -json and decodes it.
func statusJSON(t *testing.T, args ...string) Status {
	t.Helper()
	stdout, stderr, code := runCLI(append([]string{"status", "-json"}, args...)...)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var s Status
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("status -json: %v\n%s", err, stdout)
	}
	return s
}

func registerAll(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, stderr, code := runCLI("register", "-state-dir="+dir, "-name="+n, "true"); code != 0 {
			t.Fatalf("register %s: exit %d: %s", n, code, stderr)
		}
	}
}

// Every action shows its holders, or the error that kept them from being
// read: never an empty list that nobody checked.
func TestStatusReportsHoldersOrWhyNot(t *testing.T) {
	agent := startAgent(t, devconsul.Options{})
	dir := filepath.Join(t.TempDir(), "state")
	registerAll(t, dir, "a", "b", "c")

	client, err := agent.Client()
	if err != nil {
		t.Fatal(err)
	}
	lock, err := client.LockOpts(&api.LockOptions{Key: "ct-supervise/b/" + lockexec.LockKeySuffix, SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Lock(nil); err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()

	s := statusJSON(t, "-state-dir="+dir, "-http-addr="+agent.Addr())
	for _, a := range s.Actions {
		want := 0
		if a.Name == "b" {
			want = 1
		}
		if a.Holders == nil || len(a.Holders) != want || a.HoldersErr != "" {
			t.Errorf("action %s: holders %v (error %q), want %d holder(s)", a.Name, a.Holders, a.HoldersErr, want)
		}
	}

	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	stdout, _, _ := runCLI("status", "-json", "-state-dir="+dir, "-http-addr=127.0.0.1:"+itoa(port))
	if strings.Contains(stdout, `"holders": []`) {
		t.Fatalf("Consul down, yet some action shows no holders:\n%s", stdout)
	}
	s = statusJSON(t, "-state-dir="+dir, "-http-addr=127.0.0.1:"+itoa(port))
	for _, a := range s.Actions {
		if !strings.Contains(a.HoldersErr, "consul unreachable") {
			t.Errorf("Consul down: action %s: holders error %q, want it unreachable", a.Name, a.HoldersErr)
		}
	}

	// A client that cannot be made: the reason reaches the JSON.
	t.Setenv("CONSUL_CACERT", filepath.Join(t.TempDir(), "missing.pem"))
	s = statusJSON(t, "-state-dir="+dir, "-http-addr=https://127.0.0.1:"+itoa(port))
	if !strings.Contains(s.ConsulError, "missing.pem") {
		t.Errorf("consul_error %q does not give the reason", s.ConsulError)
	}
	for _, a := range s.Actions {
		if a.Holders != nil || !strings.Contains(a.HoldersErr, "missing.pem") {
			t.Errorf("no client: action %s: holders %v error %q", a.Name, a.Holders, a.HoldersErr)
		}
	}
	t.Setenv("CONSUL_CACERT", "")
	missing := filepath.Join(t.TempDir(), "token")
	s = statusJSON(t, "-state-dir="+dir, "-http-addr="+agent.Addr(), "-token-file="+missing)
	if !strings.Contains(s.ConsulError, "consul token file") || !strings.Contains(s.ConsulError, missing) {
		t.Errorf("a missing -token-file: consul_error %q", s.ConsulError)
	}
	t.Setenv("CONSUL_CACERT", filepath.Join(t.TempDir(), "missing.pem"))
	stdout, stderr, code := runCLI("status", "-state-dir="+dir, "-http-addr=https://127.0.0.1:"+itoa(port))
	if code != 0 || !strings.Contains(stdout, "Consul:") || !strings.Contains(stdout, "missing.pem") {
		t.Errorf("status without a client: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
}

// A 403 is a permission denial naming what was denied, not "unreachable".
func TestStatusPermissionDenied(t *testing.T) {
	agent := startAgent(t, devconsul.Options{ExtraConfig: aclConfig})
	dir := filepath.Join(t.TempDir(), "state")
	registerAll(t, dir, "a", "b")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	s := statusJSON(t, "-state-dir="+dir, "-http-addr="+agent.Addr())
	for _, a := range s.Actions {
		if !strings.Contains(a.HoldersErr, "permission denied") || !strings.Contains(a.HoldersErr, "ct-supervise/"+a.Name+"/.lock") {
			t.Errorf("action %s: holders error %q, want a permission denial naming its key", a.Name, a.HoldersErr)
		}
	}
	stdout, _, _ := runCLI("status", "-state-dir="+dir, "-http-addr="+agent.Addr())
	if strings.Contains(stdout, "unreachable") || !strings.Contains(stdout, "permission denied") {
		t.Errorf("status calls a 403 something else:\n%s", stdout)
	}
}

// aclConfig enables ACLs, default deny, with a known management token.
const aclConfig = `acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens { initial_management = "` + aclRootToken + `" }
}`

const aclRootToken = "00000000-0000-4000-8000-00000000beef"

// A rejected name from data cannot forge rows or send escapes.
func TestStatusQuotesHostileNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	hostile := "x\nfake  running  1  evil  \x1b[31mred"
	data, _ := json.Marshal(map[string]any{"name": hostile, "command": "true", "n": 0})
	if _, stderr, code := runCLI("register", "-state-dir="+dir, string(data)); code != 0 {
		t.Fatalf("register: exit %d %s", code, stderr)
	}
	stdout, _, code := runCLI("status", "-state-dir="+dir, "-http-addr=127.0.0.1:1")
	if code != 0 {
		t.Fatalf("status: exit %d", code)
	}
	if strings.Contains(stdout, "\x1b") || strings.Contains(stdout, "\nfake") {
		t.Fatalf("a hostile name reached the terminal raw:\n%s", stdout)
	}
	if !strings.Contains(stdout, `"x\nfake  running  1  evil  \x1b[31mred"`) {
		t.Fatalf("the hostile name is not shown quoted:\n%s", stdout)
	}
}

// The table fits the terminal; -json and status NAME keep the result whole.
func TestStatusCutsLastResultToWidth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	registerAll(t, dir, "nginx")
	long := "the command failed: " + strings.Repeat("very long output ", 20) + "END"
	setLast(t, dir, "nginx", &state.Outcome{ExitCode: 3, Error: long, Finished: time.Now()})

	t.Setenv("COLUMNS", "100")
	stdout, _, code := runCLI("status", "-state-dir="+dir, "-http-addr=127.0.0.1:1")
	if code != 0 || !strings.Contains(stdout, "nginx") {
		t.Fatalf("status: exit %d\n%s", code, stdout)
	}
	for _, l := range strings.Split(stdout, "\n") {
		if utf8.RuneCountInString(l) > 100 {
			t.Errorf("line longer than the terminal (%d): %q", utf8.RuneCountInString(l), l)
		}
	}
	if strings.Contains(stdout, "END") {
		t.Errorf("the table kept the whole result:\n%s", stdout)
	}
	for _, args := range [][]string{{"-json"}, {"nginx"}, {"-json", "nginx"}} {
		stdout, stderr, code := runCLI(append([]string{"status", "-state-dir=" + dir, "-http-addr=127.0.0.1:1"}, args...)...)
		if code != 0 || !strings.Contains(stdout, "END") {
			t.Errorf("status %v: exit %d, result cut or missing (stderr %q):\n%s", args, code, stderr, stdout)
		}
	}
}

func setLast(t *testing.T, dir, name string, o *state.Outcome) {
	t.Helper()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Update(func(st *state.State) error {
		st.Actions[name].Last = o
		st.Actions[name].Pending = false
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// status only reads: it never creates the state directory.
func TestStatusCreatesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nonexistent", "dir")
	for _, args := range [][]string{{}, {"-json"}} {
		stdout, stderr, code := runCLI(append([]string{"status", "-state-dir=" + dir, "-http-addr=127.0.0.1:1"}, args...)...)
		if code != 0 || !strings.Contains(stdout, dir) || stderr != "" {
			t.Fatalf("status %v on a missing directory: exit %d stdout %q stderr %q", args, code, stdout, stderr)
		}
	}
	if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("status created something: %v", err)
	}
}
