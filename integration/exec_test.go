package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// status returns `status -json` of the node, decoded loosely.
func (n *node) status() map[string]any {
	n.t.Helper()
	r := n.mustRun("status", "-json")
	var s map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		n.t.Fatalf("status -json: %v\n%s", err, r.stdout)
	}
	return s
}

// holdLock takes the lock at prefix from the test itself, as another node
// would, and returns its release function.
func holdLock(t *testing.T, prefix string) func() {
	t.Helper()
	client := consulClient(t)
	l, err := client.LockOpts(&api.LockOptions{Key: prefix + "/.lock", SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lock(nil); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(func() { _ = l.Unlock(); _ = l.Destroy() }) }
	t.Cleanup(release)
	return release
}

func TestRegisterConcurrentNeverCorrupts(t *testing.T) {
	n := newNode(t, "node1")
	names := []string{"alpha", "beta", "gamma", "delta"}
	var wg sync.WaitGroup
	errs := make(chan string, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := names[i%len(names)]
			r := n.run("register", "-name="+name, fmt.Sprintf("-n=%d", 1+i%3), "echo "+name)
			if r.code != 0 || r.stdout != "" {
				errs <- fmt.Sprintf("register %d: exit %d stdout %q stderr %q", i, r.code, r.stdout, r.stderr)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	st := n.status()
	actions, _ := st["actions"].([]any)
	if len(actions) != len(names) {
		t.Fatalf("%d actions declared, want %d: %v", len(actions), len(names), actions)
	}
	seen := map[string]int{}
	for _, a := range actions {
		seen[a.(map[string]any)["name"].(string)]++
	}
	for _, name := range names {
		if seen[name] != 1 {
			t.Errorf("action %q declared %d times", name, seen[name])
		}
	}
	left, _ := filepath.Glob(filepath.Join(n.stateDir, "*.tmp*"))
	if len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestExecReturnsWhileLockIsHeldElsewhere(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	marker := filepath.Join(t.TempDir(), "ran")
	n.mustRun("register", "-name=held", "date +%s%N >> "+marker)
	release := holdLock(t, "ct-supervise/held")

	r := n.mustRun("exec")
	// Functional, not a speed target: exec must not wait for the lock,
	// which is held for as long as this test wants. Speed is benchmarked.
	if r.took > 10*time.Second {
		t.Fatalf("exec took %s while the lock was held elsewhere", r.took)
	}
	time.Sleep(time.Second)
	if got := lines(marker); len(got) != 0 {
		t.Fatalf("action ran while another node held the lock: %v", got)
	}
	if n.workerPID() == 0 {
		t.Fatal("no worker is waiting for the lock")
	}
	st := n.status()
	if pid, _ := st["worker_pid"].(float64); int(pid) != n.workerPID() {
		t.Errorf("status worker_pid = %v, want %d", st["worker_pid"], n.workerPID())
	}
	a := st["actions"].([]any)[0].(map[string]any)
	holders, _ := a["holders"].([]any)
	if a["state"] != "waiting" || len(holders) != 1 || holders[0].(map[string]any)["name"] != "test holder" {
		t.Errorf("status while another node holds the lock: state %v holders %v, want waiting and the test's session", a["state"], holders)
	}
	released := time.Now()
	release()
	waitFor(t, 20*time.Second, "the action to run after the release", func() bool { return len(lines(marker)) == 1 })
	t.Logf("action ran %s after the release", time.Since(released))
	waitFor(t, 10*time.Second, "the worker to exit on an empty queue", func() bool { return n.workerPID() == 0 })
}

func TestExecCoalescesRequestsDuringRun(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	started, gate := filepath.Join(dir, "started"), filepath.Join(dir, "gate")
	// Each run records itself, then waits for the test to open the gate.
	n.mustRun("register", "-name=coalesce",
		fmt.Sprintf("echo run >> %s; while [ ! -e %s ]; do sleep 0.05; done", started, gate))
	n.mustRun("exec")
	waitFor(t, 20*time.Second, "the first run to start", func() bool { return len(lines(started)) == 1 })

	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); n.mustRun("exec", "coalesce") }()
	}
	wg.Wait()
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The worker exits only once the queue is empty.
	waitFor(t, 30*time.Second, "the queue to drain", func() bool { return n.workerPID() == 0 })
	if got := len(lines(started)); got != 2 {
		t.Fatalf("the action ran %d times, want exactly 2 (one run, then one for the 20 requests made during it)", got)
	}
}

func TestExecWithConsulDownRunsWhenItIsBack(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	marker := filepath.Join(t.TempDir(), "ran")
	n.mustRun("register", "-name=outage", "echo ran >> "+marker)
	agent.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := agent.Restart(); err != nil {
				t.Errorf("restarting consul: %v", err)
			}
		}
	})
	r := n.mustRun("exec")
	if r.took > 10*time.Second {
		t.Fatalf("exec took %s with Consul down", r.took)
	}
	time.Sleep(2 * time.Second)
	if len(lines(marker)) != 0 {
		t.Fatal("action ran without a lock")
	}
	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	waitFor(t, 60*time.Second, "the action to run once Consul is back", func() bool { return len(lines(marker)) == 1 })
	if !strings.Contains(readFile(t, filepath.Join(n.stateDir, "worker.log")), "unreachable") {
		t.Error("the worker log does not say Consul was unreachable")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A failing action is retried with backoff, then given up after
// -max-attempts and reported; exec -wait exits with its status.
func TestExecWaitReportsRetriesAndFailure(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	tries := filepath.Join(dir, "tries")

	// Fails on the first try, succeeds on the second.
	flaky := fmt.Sprintf(`echo try >> %s; [ $(wc -l < %s) -ge 2 ]`, tries, tries)
	n.mustRun("register", "-name=flaky", "-max-attempts=3", flaky)
	r := n.run("exec", "-wait", "-wait-timeout=60s")
	if r.code != 0 {
		t.Fatalf("exec -wait: exit %d %s", r.code, r.stderr)
	}
	if got := len(lines(tries)); got != 2 {
		t.Fatalf("%d tries, want 2 (one failure, one retry)", got)
	}

	// Always fails: given up after 2 tries, the status is ours.
	n.mustRun("register", "-name=broken", "-max-attempts=2", "exit 3")
	r = n.run("exec", "-wait", "-wait-timeout=60s", "broken")
	if r.code != 3 || !strings.Contains(r.stderr, `action "broken" failed`) {
		t.Fatalf("exec -wait: exit %d stderr %q, want 3 and the failure", r.code, r.stderr)
	}
	var broken map[string]any
	for _, a := range n.status()["actions"].([]any) {
		if a.(map[string]any)["name"] == "broken" {
			broken = a.(map[string]any)
		}
	}
	last, _ := broken["last"].(map[string]any)
	if broken["state"] != "failed" || last["failed"] != true || last["exit_code"] != float64(3) {
		t.Fatalf("status of the failed action: %v", broken)
	}
	log := readFile(t, filepath.Join(n.stateDir, "worker.log"))
	if !strings.Contains(log, "will retry") || !strings.Contains(log, "giving up") {
		t.Fatalf("the worker log does not tell the retries and the failure:\n%s", log)
	}
}

// A worker run in the foreground (as a service) serves exec's requests and
// stops cleanly on SIGTERM.
func TestForegroundWorker(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	marker := filepath.Join(t.TempDir(), "ran")
	cmd := exec.Command(binary, "worker", "-keep-running")
	cmd.Env = n.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(t, 10*time.Second, "the worker to take the state directory", func() bool { return n.workerPID() == cmd.Process.Pid })

	n.mustRun("register", "-name=fg", "echo ran >> "+marker)
	n.mustRun("exec")
	waitFor(t, 20*time.Second, "the action to run", func() bool { return len(lines(marker)) == 1 })
	if n.workerPID() != cmd.Process.Pid {
		t.Fatal("exec started a second worker beside the foreground one")
	}
	// A second foreground worker (a service started while exec's worker
	// runs) waits its turn rather than fail, and stops when told to.
	second := exec.Command(binary, "worker", "-keep-running")
	second.Env = n.env
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Process.Kill() })
	exited := make(chan error, 1)
	go func() { exited <- second.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("a second foreground worker exited (%v) instead of waiting", err)
	case <-time.After(time.Second):
	}
	if n.workerPID() != cmd.Process.Pid {
		t.Fatal("the waiting worker took the state directory")
	}
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("the waiting worker on SIGTERM: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker on SIGTERM: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "action finished") {
		t.Fatalf("a foreground worker logs to stderr too; got:\n%s", stderr.String())
	}
}

// Requests left queued by a worker that died are resumed by the next
// register, that is by the next render, even one that changes nothing and
// so runs no exec.
func TestRegisterResumesAnOrphanedQueue(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	marker := filepath.Join(t.TempDir(), "ran")
	decl := []string{"register", "-name=orphan", "echo ran >> " + marker}
	n.mustRun(decl...)
	release := holdLock(t, "ct-supervise/orphan")
	n.mustRun("exec")
	waitFor(t, 10*time.Second, "the worker to wait for the lock", func() bool { return n.workerPID() > 0 })
	dead := n.workerPID()
	if dead <= 0 { // never kill(-1)
		t.Fatalf("no worker pid (%d)", dead)
	}
	if err := syscall.Kill(dead, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the worker to die", func() bool { return n.workerPID() == 0 })

	n.mustRun(decl...)
	waitFor(t, 5*time.Second, "register to start a new worker", func() bool {
		pid := n.workerPID()
		return pid != 0 && pid != dead
	})
	release()
	waitFor(t, 20*time.Second, "the queued action to run", func() bool { return len(lines(marker)) == 1 })
}
