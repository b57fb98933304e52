package main

import (
	"strings"
	"testing"
)

// A service user whose home does not exist has no usable default state
// directory. The render must go on: register warns and exits 0, exec says
// so in consul-template's log and exits 0; only an explicit wait fails.
func TestNoUsableDefaultStateDir(t *testing.T) {
	old := defaultStateDir
	defaultStateDir = func() (string, bool, error) { return "/proc/ct-supervise-nowhere/state", true, nil }
	t.Cleanup(func() { defaultStateDir = old })

	cases := []struct {
		name string
		args []string
		code int
	}{
		{"register", []string{"register", "-name=nginx", "true"}, 0},
		{"exec", []string{"exec"}, 0},
		{"exec -wait", []string{"exec", "-wait"}, ExitError},
		{"worker", []string{"worker"}, ExitError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(tc.args...)
			if code != tc.code || stdout != "" {
				t.Fatalf("exit %d stdout %q stderr %q, want exit %d", code, stdout, stderr, tc.code)
			}
			oneErrorLine(t, stderr, "no usable state directory: the default")
			if !strings.Contains(stderr, "/proc/ct-supervise-nowhere/state") || !strings.Contains(stderr, "StateDirectory=") {
				t.Fatalf("stderr %q does not name the default and the way out", stderr)
			}
		})
	}
	// status creates nothing, and nothing is there to show.
	stdout, stderr, code := runCLI("status")
	if code != 0 || !strings.Contains(stdout, "does not exist") || stderr != "" {
		t.Fatalf("status: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
}
