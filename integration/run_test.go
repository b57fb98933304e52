package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sessionsNamed lists the Consul sessions whose name starts with prefix.
func sessionsNamed(t *testing.T, prefix string) []string {
	t.Helper()
	client := consulClient(t)
	all, _, err := client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range all {
		if strings.HasPrefix(s.Name, prefix) {
			names = append(names, s.Name+" "+s.ID)
		}
	}
	return names
}

// Many `ct-supervise run` processes on one prefix: never more than -n run
// the command at once, and with -n 3 they really do run side by side.
func TestRunProcessesNeverExceedLimit(t *testing.T) {
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			act := ledgerAction(t, "0.3")
			name := fmt.Sprintf("invariant-%d", limit)
			const procs = 12
			nodes := make([]*node, procs)
			for i := range nodes {
				nodes[i] = newNode(t, fmt.Sprintf("proc%02d", i))
			}
			var wg sync.WaitGroup
			results := make([]result, procs)
			for i, n := range nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = n.run("run", fmt.Sprintf("-n=%d", limit), "-name="+name, act.command)
				}()
			}
			wg.Wait()
			for i, r := range results {
				if r.code != 0 {
					t.Errorf("process %d: exit %d: %s", i, r.code, r.stderr)
				}
			}
			runs, err := parseLedger(lines(act.ledger))
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != procs {
				t.Fatalf("%d runs in the ledger, want %d:\n%s", len(runs), procs, timeline(runs))
			}
			peak := maxConcurrency(runs)
			if peak > limit {
				t.Fatalf("%d commands ran at once with -n=%d:\n%s", peak, limit, timeline(runs))
			}
			if limit > 1 && peak < 2 {
				t.Fatalf("with -n=%d the commands never overlapped: the semaphore is not concurrent:\n%s", limit, timeline(runs))
			}
			if left := sessionsNamed(t, "ct-supervise "+name); len(left) > 0 {
				t.Fatalf("sessions left behind: %v", left)
			}
		})
	}
}

// SIGTERM to `ct-supervise run` reaches the command, whose status becomes
// ours, and the lock is still released.
func TestRunForwardsSIGTERM(t *testing.T) {
	n := newNode(t, "node1")
	dir := t.TempDir()
	started, got := filepath.Join(dir, "started"), filepath.Join(dir, "got")
	// A foreground loop, not `sleep 30 & wait`: a signal landing just before
	// wait may be left pending by the shell until the sleep ends.
	script := fmt.Sprintf(`trap 'echo TERM > %s; exit 7' TERM; touch %s; while :; do sleep 0.1; done`, got, started)
	cmd := exec.Command(binary, "run", "-name=sigterm", script)
	cmd.Env = n.env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(t, 20*time.Second, "the command to start", func() bool { _, err := os.Stat(started); return err == nil })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("exit %d (%v), want the command's 7", code, err)
	}
	if b, _ := os.ReadFile(got); strings.TrimSpace(string(b)) != "TERM" {
		t.Fatal("the command did not receive SIGTERM")
	}
	if left := sessionsNamed(t, "ct-supervise sigterm"); len(left) > 0 {
		t.Fatalf("sessions left behind: %v", left)
	}
	// The lock is free: another run gets it at once.
	if r := n.run("run", "-name=sigterm", "-try=2s", "true"); r.code != 0 {
		t.Fatalf("the lock was not released: exit %d %s", r.code, r.stderr)
	}
}

// ct-supervise run and `consul lock` use the same layout in KV, so that a
// fleet can move from one to the other without a window where both run.
func TestRunSharesPrefixWithConsulLock(t *testing.T) {
	n := newNode(t, "node1")
	consul, err := exec.LookPath("consul")
	if err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			dir := t.TempDir()
			started := filepath.Join(dir, "started")
			gate := filepath.Join(dir, "gate")
			prefix := fmt.Sprintf("ct-supervise/shared-%d", limit)
			// consul lock takes every slot, holding until the gate opens.
			var holders []*exec.Cmd
			for i := 0; i < limit; i++ {
				cmd := exec.Command(consul, "lock", fmt.Sprintf("-n=%d", limit), prefix,
					fmt.Sprintf("echo x >> %s; while [ ! -e %s ]; do sleep 0.05; done", started, gate))
				cmd.Env = n.env
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
				holders = append(holders, cmd)
			}
			waitFor(t, 20*time.Second, "consul lock to take every slot", func() bool { return len(lines(started)) == limit })

			r := n.run("run", fmt.Sprintf("-n=%d", limit), "-prefix="+prefix, "-try=500ms", "true")
			if r.code != 75 {
				t.Fatalf("run while consul lock holds every slot: exit %d %s, want 75", r.code, r.stderr)
			}
			if err := os.WriteFile(gate, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, h := range holders {
				if err := h.Wait(); err != nil {
					t.Fatalf("consul lock: %v", err)
				}
			}
			if r := n.run("run", fmt.Sprintf("-n=%d", limit), "-prefix="+prefix, "-try=5s", "true"); r.code != 0 {
				t.Fatalf("run after consul lock released: exit %d %s", r.code, r.stderr)
			}
		})
	}
}
