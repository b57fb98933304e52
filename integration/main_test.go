// Package integration tests ct-supervise as operators run it: the real
// binary against a real Consul agent and, for the end-to-end scenarios, real
// consul-template processes.
package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
	"ct-supervise/worker"
)

var (
	// binary is the ct-supervise built for this test run.
	binary string
	// agent is the package's Consul dev agent; nil when skipping outside CI.
	agent *devconsul.Agent
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ct-supervise-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "ct-supervise")
	build := exec.Command("go", "build", "-race", "-o", binary, "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building ct-supervise: %v\n", err)
		return 1
	}
	return devconsul.RunPackage(m, &agent)
}

// needConsul skips (outside CI only) when there is no consul binary.
func needConsul(t *testing.T) {
	t.Helper()
	if agent == nil {
		devconsul.MissingOrFatal(t, devconsul.ErrNoBinary)
	}
}

// consulClient returns a client for the package's agent, skipping (outside
// CI only) as needConsul does when there is none: a test may talk to Consul
// before it starts any node.
func consulClient(t *testing.T) *api.Client {
	t.Helper()
	return devconsul.SharedClient(t, agent)
}

// node is one simulated machine: its own state directory, talking to the
// package's Consul agent or, in the fault tests, to its own agent of a
// cluster.
type node struct {
	t        *testing.T
	name     string
	stateDir string
	addr     string // the Consul agent's HTTP address
	env      []string
}

func newNode(t *testing.T, name string) *node {
	t.Helper()
	needConsul(t)
	return newNodeOn(t, name, agent.Addr())
}

// newNodeOn is newNode for a node whose Consul agent is at addr.
func newNodeOn(t *testing.T, name, addr string) *node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, name: name, stateDir: dir, addr: addr}
	n.env = append(os.Environ(),
		"CONSUL_HTTP_ADDR="+addr,
		"CT_SUPERVISE_STATE_DIR="+dir,
		"CT_SUPERVISE_NODE="+name,
		// The race-enabled binary otherwise sleeps a second at every exit.
		"GORACE=atexit_sleep_ms=0",
	)
	t.Cleanup(n.stopWorker)
	return n
}

// result is one finished ct-supervise invocation.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// run runs ct-supervise with args on this node and waits for it.
func (n *node) run(args ...string) result {
	n.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = n.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		n.t.Fatalf("running ct-supervise %v: %v", args, err)
	}
	return r
}

// mustRun runs ct-supervise and fails the test unless it exits 0.
func (n *node) mustRun(args ...string) result {
	n.t.Helper()
	r := n.run(args...)
	if r.code != 0 {
		n.t.Fatalf("ct-supervise %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// workerPID is the pid of this node's worker, 0 if none runs. It asks the
// worker's lock, not the process table: a dead worker may linger as a
// zombie until init reaps it, but its lock is gone.
func (n *node) workerPID() int {
	pid, err := worker.RunningPIDIn(n.stateDir)
	if err != nil {
		n.t.Errorf("worker of %s: %v", n.name, err)
	}
	return pid
}

// stopWorker stops a worker left running by a test (its action is
// terminated and its lock released), and fails the test if it won't stop.
func (n *node) stopWorker() {
	pid := n.workerPID()
	for i := 0; pid < 0 && i < 50; i++ { // locked, pid not written yet
		time.Sleep(10 * time.Millisecond)
		pid = n.workerPID()
	}
	if pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for n.workerPID() != 0 {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			n.t.Errorf("worker %d of %s did not stop on SIGTERM", pid, n.name)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logOnFailure prints the worker log when the test fails.
func (n *node) logOnFailure() {
	n.t.Cleanup(func() {
		if n.t.Failed() {
			b, _ := os.ReadFile(filepath.Join(n.stateDir, "worker.log"))
			n.t.Logf("worker.log of %s:\n%s", n.name, b)
		}
	})
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lines returns the non-empty lines of a file ("" if it does not exist).
func lines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
