package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version and Commit identify this build. `make build` and `make dist`
// stamp both with -ldflags "-X main.Version=... -X main.Commit=..." (see
// scripts/version.sh); a plain `go build` leaves these defaults, and the
// commit is then taken from the build information the go command records
// when it builds from a git checkout.
var (
	// Version is a semantic version without the leading "v": the tag from
	// `git describe`, or 0.0.0-dev+COMMIT between tags.
	Version = "0.0.0-dev"
	// Commit is the full git commit hash, suffixed "-dirty" when the tree
	// had uncommitted changes; empty when unknown.
	Commit = ""
)

// versionString is what `ct-supervise version` prints: one line naming the
// version, the commit, the Go version and the platform, so that a bug
// report pasting it says exactly which build it was.
func versionString() string {
	commit := Commit
	if commit == "" {
		commit = buildInfoCommit()
	}
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("%s v%s (commit %s, %s, %s/%s)", Name, Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// buildInfoCommit is the commit recorded by the go command's -buildvcs, ""
// when there is none (release builds use -buildvcs=false and stamp Commit).
func buildInfoCommit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" && modified == "true" {
		rev += "-dirty"
	}
	return rev
}
