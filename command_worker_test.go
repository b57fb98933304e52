package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ct-supervise/state"
)

// The worker's log is rotated by size as it is written, and only by the
// worker holding the instance lock.
func TestWorkerLogRotation(t *testing.T) {
	const max = 1000
	line := []byte(strings.Repeat("x", 99) + "\n")
	cases := []struct {
		name    string
		holding bool
	}{
		{"not holding the lock: never rotates", false},
		{"holding the lock: rotates by size", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			store, err := state.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			old := bytes.Repeat([]byte("o"), max+1) // a log over the cap already
			if err := os.WriteFile(filepath.Join(dir, WorkerLogFile), old, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := openWorkerLog(store, func() bool { return tc.holding })
			if err != nil {
				t.Fatal(err)
			}
			l.max = max
			for i := 0; i < 55; i++ {
				if _, err := l.Write(line); err != nil {
					t.Fatal(err)
				}
				fi, err := os.Stat(filepath.Join(dir, WorkerLogFile))
				if err != nil {
					t.Fatal(err)
				}
				if tc.holding && fi.Size() > max {
					t.Fatalf("after %d lines the log holds %d bytes, past its cap of %d", i+1, fi.Size(), max)
				}
			}
			l.Close()
			cur, _ := os.ReadFile(filepath.Join(dir, WorkerLogFile))
			prev, _ := os.ReadFile(filepath.Join(dir, WorkerLogFile+".1"))
			if !tc.holding {
				if len(prev) != 0 || len(cur) != len(old)+55*len(line) {
					t.Fatalf("rotated without the lock: %d bytes, .1 %d bytes", len(cur), len(prev))
				}
				return
			}
			if len(prev) == 0 || len(cur)%len(line) != 0 || len(cur) == 0 {
				t.Fatalf("not rotated as written: log %d bytes, .1 %d bytes", len(cur), len(prev))
			}
		})
	}
}
