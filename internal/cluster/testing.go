package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ct-supervise/internal/devconsul"
)

// logTail bounds how much of each agent's log a failing test prints.
const logTail = 4 << 10

// ForTest starts a cluster for one test and stops it when the test ends,
// however it ends; a failing test prints the tail of every agent's log.
// Without a consul binary it fails the test under CI=true and skips it,
// with a message saying how to get one, elsewhere.
func ForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c, err := Start(opts)
	if err != nil {
		if err != devconsul.ErrNoBinary {
			t.Logf("consul agent logs:\n%s", logsIn(opts.Dir, logTail))
		}
		devconsul.MissingOrFatal(t, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consul agent logs:\n%s", c.Logs(logTail))
		}
		c.Stop()
	})
	return c
}

// logsIn returns the tail of every agent log under dir, for a cluster that
// failed to start (Start has already stopped it).
func logsIn(dir string, max int) string {
	paths, _ := filepath.Glob(filepath.Join(dir, "*", "agent.log"))
	var b strings.Builder
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		if len(data) > max {
			data = data[len(data)-max:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", p, data)
	}
	return b.String()
}
