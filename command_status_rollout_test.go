package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

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
