package main

import (
	"runtime"
	"testing"
)

func TestVersionString(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, tc := range []struct {
		name            string
		version, commit string
		want            string
	}{
		{"stamped release", "1.2.0", "0123456789abcdef0123456789abcdef01234567",
			"ct-supervise v1.2.0 (commit 0123456789abcdef0123456789abcdef01234567, " + runtime.Version() + ", " + platform + ")"},
		{"stamped dirty dev build", "0.0.0-dev+0123456789ab.dirty", "0123456789abcdef0123456789abcdef01234567-dirty",
			"ct-supervise v0.0.0-dev+0123456789ab.dirty (commit 0123456789abcdef0123456789abcdef01234567-dirty, " + runtime.Version() + ", " + platform + ")"},
		// A test binary carries no vcs build settings, so an unstamped
		// build says it does not know its commit rather than print nothing.
		{"unstamped", "0.0.0-dev", "",
			"ct-supervise v0.0.0-dev (commit unknown, " + runtime.Version() + ", " + platform + ")"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version, Commit = tc.version, tc.commit
			if got := versionString(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
			stdout, stderr, code := runCLI("version")
			if code != 0 || stderr != "" || stdout != tc.want+"\n" {
				t.Errorf("ct-supervise version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
			}
		})
	}
}
