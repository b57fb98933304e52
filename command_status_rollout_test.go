package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ct-supervise/fleet"
	"ct-supervise/internal/devconsul"
	"ct-supervise/state"
)

// status shows the rolling-restart policy, and a service a failed try left
// in maintenance with how to take it out.
func TestStatusShowsRolloutPolicyAndMaintenanceLeft(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, stderr, code := runCLI("register", "-state-dir="+dir, "-name=app", "-maint=web", "-drain=5s",
		"-wait-healthy=web", "-check=nginx -t", "-version=v3", "systemctl restart app"); code != 0 {
		t.Fatalf("register: exit %d: %s", code, stderr)
	}
	setLast(t, dir, "app", &state.Outcome{ExitCode: 79, Error: "not healthy after 2m0s: check \"http\" critical",
		Failed: true, MaintLeft: "web", Finished: time.Now()})

	stdout, _, code := runCLI("status", "-state-dir="+dir, "-http-addr=127.0.0.1:1", "app")
	if code != 0 {
		t.Fatalf("status app: exit %d", code)
	}
	for _, want := range []string{"Check:", "nginx -t", "Maintenance:", "web", "Drain:", "5s", "Wait healthy:",
		"Health timeout:", "2m0s", "On failure:", "halt", "Version:", "v3",
		`"web" LEFT IN MAINTENANCE`, "consul maint -disable -service"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status app lacks %q:\n%s", want, stdout)
		}
	}
	s := statusJSON(t, "-state-dir="+dir, "-http-addr=127.0.0.1:1")
	a := s.Actions[0]
	if a.Maint != "web" || a.Check != "nginx -t" || a.OnFailure != "halt" || a.HealthTimeout != "2m0s" ||
		len(a.WaitHealthy) != 1 || a.Version != "v3" || a.Last == nil || a.Last.MaintLeft != "web" {
		t.Fatalf("status -json: %+v", a)
	}
}

// status shows a halt and a pause of an action that is not running: who
// set them, when and why.
func TestStatusShowsHaltAndPause(t *testing.T) {
	agent := startAgent(t, devconsul.Options{})
	client, err := agent.Client()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	registerAll(t, dir, "app")
	f := fleet.New(client, "ct-supervise/app")
	at := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	if err := f.SetHalt(context.Background(), fleet.Halt{Node: "web-3", Reason: `check "http" critical: 502`, At: at}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetPause(context.Background(), fleet.Pause{By: "ops@bastion", Reason: "freeze", At: at, Global: true}); err != nil {
		t.Fatal(err)
	}
	stdout, _, code := runCLI("status", "-state-dir="+dir, "-http-addr="+agent.Addr(), "app")
	if code != 0 {
		t.Fatalf("status app: exit %d", code)
	}
	for _, want := range []string{`HALTED by web-3 at 2026-11-27T03:00:00Z: check "http" critical: 502`,
		"PAUSED (every action) by ops@bastion", "freeze", "ct-supervise resume app lifts it"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status app lacks %q:\n%s", want, stdout)
		}
	}
	s := statusJSON(t, "-state-dir="+dir, "-http-addr="+agent.Addr())
	if a := s.Actions[0]; a.Halt == nil || a.Halt.Node != "web-3" || a.Pause == nil || !a.Pause.Global {
		t.Fatalf("status -json: halt %+v, pause %+v", a.Halt, a.Pause)
	}
}
