package integration

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"ct-supervise/internal/cluster"
)

// The fault suite: real clusters (one client agent per node) and the
// faults of a fleet — a holder's agent frozen or killed, the leader server
// killed — each ending with the same checks: never more than N actions at
// once across nodes, every change applied on every live node, no session
// left behind, no orphan process. Each test logs a "timing:" line with what
// it measured; the README's failure table quotes them.

// Durations of the fault tests. The frozen holder stays frozen well past
// the lock-delay (15 s) plus the few seconds the servers take to declare
// its node failed, so that without fencing another node acquires while it
// is frozen.
const (
	longFreeze  = 25 * time.Second
	briefFreeze = time.Second
	// holderRun is how long the first run of a holder lasts: longer than
	// any fault, so that only the fault ends it.
	holderRun = 60 * time.Second
	// otherHolderRun is how long the holders that are not frozen hold a
	// semaphore's other slots.
	otherHolderRun = 35 * time.Second
	// otherRun is how long every other run lasts.
	otherRun = time.Second
	// driverTimeout bounds each driver from the fault on.
	driverTimeout = 3 * time.Minute
)

// runArgs is `ct-supervise run` of the action under a lock or semaphore.
func runArgs(name string, limit int, command string) []string {
	return []string{"run", "-n=" + strconv.Itoa(limit), "-name=" + name, "-try=3m", command}
}

// holderThenShort runs the action for holderRun on the first attempt and
// for otherRun on the next ones.
func holderThenShort(name string, limit int, act *faultAction, seen string) func(int) []string {
	return func(attempt int) []string {
		d := otherRun
		if attempt == 1 {
			d = holderRun
		}
		return runArgs(name, limit, act.command(d, seen))
	}
}

// short runs the action for otherRun on every attempt.
func short(name string, limit int, act *faultAction, seen string) func(int) []string {
	return func(int) []string { return runArgs(name, limit, act.command(otherRun, seen)) }
}

// waitStarted waits until each of nodes has a run of the action under way.
func waitStarted(t *testing.T, act *faultAction, nodes ...*node) {
	t.Helper()
	waitFor(t, 60*time.Second, "the holders to start their action", func() bool {
		open := map[string]bool{}
		for _, r := range act.runs() {
			open[r.node] = r.end == 0
		}
		for _, n := range nodes {
			if !open[n.name] {
				return false
			}
		}
		return true
	})
}

// finish waits for every driver, then makes the checks every fault ends
// with: each node's driver succeeded and its node completed a run that saw
// seen, the limit held across nodes, and no session or action is left.
func finish(t *testing.T, fc *faultCluster, act *faultAction, limit int, seen string, drivers ...*driver) {
	t.Helper()
	for _, d := range drivers {
		d.wait(t, driverTimeout)
		t.Logf("attempts:\n%s", d.report())
		if !d.succeeded() {
			t.Errorf("%s never ran its action to the end:\n%s", d.node.name, d.report())
		}
		if !act.completed(d.node.name, seen) {
			t.Errorf("%s has no completed run of %s in the ledger", d.node.name, seen)
		}
	}
	act.checkNoOrphans()
	act.checkLimit(limit)
	fc.checkNoSessions()
	t.Logf("ledger:\n%s", timeline(act.runs()))
}

// handover measures, from the fault at t0, when the holder's command
// stopped and when another node started: the two columns of the failure
// table. A run still open counts as not stopped.
func handover(t *testing.T, act *faultAction, holder string, t0 time.Time) (stop, start string) {
	t.Helper()
	runs := act.runs()
	stop, start = "never", "never"
	if r, ok := runOf(runs, holder, t0); ok && r.end != 0 {
		stop = fmt.Sprintf("%.1fs", time.Unix(0, r.end).Sub(t0).Seconds())
	}
	if at, _, ok := firstStartAfter(runs, t0, holder); ok {
		start = fmt.Sprintf("%.1fs", at.Sub(t0).Seconds())
	}
	return stop, start
}

// TestFaultFrozenHolderAgent freezes the holder's Consul agent (SIGSTOP):
// a hung agent, a stalled VM, a node that can neither answer nor be
// reached. Past the fencing deadline the holder must stop its command
// before anyone else can acquire (with a lock: the lock-delay; with a
// semaphore: the same period, which Consul itself does not impose); a
// brief freeze, within monitor-retry, must change nothing.
func TestFaultFrozenHolderAgent(t *testing.T) {
	fc := newFaultCluster(t, cluster.Options{Nodes: 4})
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("past deadline n=%d", limit), func(t *testing.T) {
			fc.ready()
			act := newFaultAction(t)
			name := fmt.Sprintf("freeze-n%d", limit)
			// node1 .. node<limit> hold every slot; node1 is frozen.
			var holders, all []*driver
			for i, n := range fc.nodes[:limit] {
				args := holderThenShort(name, limit, act, "c1")
				if i > 0 {
					// Long enough to keep their slots past any hand-over.
					args = func(int) []string { return runArgs(name, limit, act.command(otherHolderRun, "c1")) }
				}
				holders = append(holders, drive(t, n, 10, args))
				waitStarted(t, act, n)
			}
			all = append(all, holders...)
			for _, n := range fc.nodes[limit:min(limit+2, len(fc.nodes))] {
				all = append(all, drive(t, n, 10, short(name, limit, act, "c1")))
			}
			time.Sleep(time.Second) // the others are waiting
			frozen := fc.agentOf(fc.nodes[0])
			t0 := time.Now()
			if err := frozen.Freeze(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(longFreeze)
			if err := frozen.Resume(); err != nil {
				t.Fatal(err)
			}
			finish(t, fc, act, limit, "c1", all...)
			stop, start := handover(t, act, fc.nodes[0].name, t0)
			t.Logf("timing: holder's agent frozen %s, n=%d: command stopped after %s, another node started after %s",
				longFreeze, limit, stop, start)
		})
	}
	t.Run("brief", func(t *testing.T) {
		fc.ready()
		act := newFaultAction(t)
		const name = "freeze-brief"
		holder := drive(t, fc.nodes[0], 1, func(int) []string { return runArgs(name, 1, act.command(6*time.Second, "c1")) })
		waitStarted(t, act, fc.nodes[0])
		other := drive(t, fc.nodes[1], 1, short(name, 1, act, "c1"))
		time.Sleep(time.Second)
		frozen := fc.agentOf(fc.nodes[0])
		if err := frozen.Freeze(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(briefFreeze)
		if err := frozen.Resume(); err != nil {
			t.Fatal(err)
		}
		// No loss: the holder's one attempt ran to the end.
		finish(t, fc, act, 1, "c1", holder, other)
	})
}

// TestFaultHolderAgentKilled kills the holder's agent (SIGKILL) and starts
// it again: the holder sees connection errors, stops its command when
// monitor-retry runs out, and runs again once its agent is back.
func TestFaultHolderAgentKilled(t *testing.T) {
	fc := newFaultCluster(t, cluster.Options{Nodes: 2})
	act := newFaultAction(t)
	const name = "agent-killed"
	holder := drive(t, fc.nodes[0], 30, holderThenShort(name, 1, act, "c1"))
	waitStarted(t, act, fc.nodes[0])
	other := drive(t, fc.nodes[1], 10, short(name, 1, act, "c1"))
	time.Sleep(time.Second)
	killed := fc.agentOf(fc.nodes[0])
	t0 := time.Now()
	killed.Kill()
	// Down long enough for the holder to give up and another to take over.
	waitFor(t, 60*time.Second, "another node to take over", func() bool {
		_, _, ok := firstStartAfter(act.runs(), t0, fc.nodes[0].name)
		return ok
	})
	if err := killed.Restart(); err != nil {
		t.Fatal(err)
	}
	finish(t, fc, act, 1, "c1", holder, other)
	stop, start := handover(t, act, fc.nodes[0].name, t0)
	t.Logf("timing: holder's agent killed: command stopped after %s, another node started after %s", stop, start)
}

// TestFaultLeaderKilledDuringRoll kills the raft leader of three servers
// while eight contenders roll under -n 1: the election's errors (500s,
// "No cluster leader", refused connections) are transient, so every one
// of the eight runs still happens, one at a time.
func TestFaultLeaderKilledDuringRoll(t *testing.T) {
	fc := newFaultCluster(t, cluster.Options{Servers: 3, Nodes: 2})
	act := newFaultAction(t)
	const (
		name        = "leader-killed"
		contenders  = 8
		killAfter   = 2 // runs finished
		eachRunTime = 500 * time.Millisecond
	)
	var drivers []*driver
	for i := range contenders {
		n := fc.nodes[i%len(fc.nodes)]
		// One attempt: a run that fails on the election is a run lost.
		drivers = append(drivers, drive(t, n, 1, func(int) []string {
			return runArgs(name, 1, act.command(eachRunTime, fmt.Sprintf("r%d", i)))
		}))
	}
	waitFor(t, 60*time.Second, "the first runs to finish", func() bool {
		done := 0
		for _, r := range act.runs() {
			if r.end != 0 {
				done++
			}
		}
		return done >= killAfter
	})
	leader, err := fc.c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	leader.Kill()
	next, err := fc.c.WaitLeader(leader, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s killed; %s leads after %s", leader.Name, next.Name, time.Since(t0).Round(time.Millisecond))
	ok := 0
	for _, d := range drivers {
		d.wait(t, driverTimeout)
		if d.succeeded() {
			ok++
		} else {
			t.Errorf("a contender on %s failed:\n%s", d.node.name, d.report())
		}
	}
	t.Logf("timing: leader killed during a roll of %d: %d of %d runs happened", contenders, ok, contenders)
	act.checkNoOrphans()
	act.checkLimit(1)
	fc.checkNoSessions()
	if runs := act.runs(); len(runs) != contenders {
		t.Errorf("%d runs in the ledger, want %d:\n%s", len(runs), contenders, timeline(runs))
	}
}
