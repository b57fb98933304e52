package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ct-supervise/lockexec"
	"ct-supervise/state"
)

func TestForgetCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	registerAll(t, dir, "idle", "queued")
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Update(func(st *state.State) error {
		_, err := st.Enqueue([]string{"queued"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.RecordRejection("", "no name", time.Now()); err != nil {
		t.Fatal(err)
	}

	bad := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no name", []string{sd}, lockexec.ExitUsage, "missing NAME"},
		{"names and -rejected", []string{sd, "-rejected", "idle"}, lockexec.ExitUsage, "either NAMEs or -rejected"},
		{"unknown name", []string{sd, "idle", "nope"}, ExitError, `unknown action: no action or rejected declaration "nope"; nothing forgotten`},
		{"queued", []string{sd, "idle", "queued"}, ExitError, `action is queued or running: "queued" (-force forgets it`},
		{"missing state directory", []string{"-state-dir=" + filepath.Join(t.TempDir(), "none"), "idle"}, ExitError, "does not exist"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(append([]string{"forget"}, tc.args...)...)
			if code != tc.code || stdout != "" {
				t.Fatalf("exit %d stdout %q stderr %q, want exit %d", code, stdout, stderr, tc.code)
			}
			oneErrorLine(t, stderr, tc.want)
		})
	}
	if st, _ := store.Load(); len(st.Actions) != 2 {
		t.Fatalf("a refused forget removed something: %v", st.Actions)
	}

	for _, args := range [][]string{{sd, "idle"}, {sd, "-force", "queued"}, {sd, "-rejected"}} {
		if stdout, stderr, code := runCLI(append([]string{"forget"}, args...)...); code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("forget %v: exit %d stdout %q stderr %q", args, code, stdout, stderr)
		}
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Actions) != 0 || len(st.Errors) != 0 {
		t.Fatalf("left after forget: %v %v", st.Actions, st.Errors)
	}
}

// Rejected declarations reach where operators look: exec's output (which
// consul-template logs) and the worker's log, once per new rejection.
func TestRejectionsAreRepeatedWhereOperatorsLook(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "-state-dir=" + dir
	if _, stderr, code := runCLI("register", sd, "-allow-data-commands", `{"name":"app","command":"true"}`); code != 0 {
		t.Fatalf("register: %d %s", code, stderr)
	}
	for range 3 { // consul-template calls a plugin several times per render
		if _, stderr, code := runCLI("register", sd, "-allow-data-commands", `{"name":"app","command":"true","n":0}`); code != 0 {
			t.Fatalf("register bad data: %d %s", code, stderr)
		}
	}
	log, err := os.ReadFile(filepath.Join(dir, WorkerLogFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "rejected a declaration from data"); n != 1 || !strings.Contains(string(log), "name=app") {
		t.Fatalf("worker log has %d rejection lines, want 1 naming app:\n%s", n, log)
	}

	// exec NAME of an unknown action queues nothing (no worker starts).
	_, stderr, code := runCLI("exec", sd, "other")
	if code != 0 || !strings.Contains(stderr, `warning: rejected declaration app at `) || !strings.Contains(stderr, "-n must be at least 1") {
		t.Fatalf("exec: exit %d stderr %q, want the rejection repeated", code, stderr)
	}

	// A good declaration of that name clears it.
	if _, stderr, code := runCLI("register", sd, "-allow-data-commands", `{"name":"app","command":"true"}`); code != 0 {
		t.Fatalf("register: %d %s", code, stderr)
	}
	if stdout, _, _ := runCLI("status", sd, "-http-addr=127.0.0.1:1"); strings.Contains(stdout, "Rejected") {
		t.Fatalf("the rejection stays after a good declaration:\n%s", stdout)
	}
	if _, stderr, _ := runCLI("exec", sd, "other"); strings.Contains(stderr, "rejected") {
		t.Fatalf("exec still repeats a cleared rejection: %q", stderr)
	}
}
