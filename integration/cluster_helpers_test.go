package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/cluster"
	"ct-supervise/internal/shell"
)

// This file is the fault-suite harness: a real cluster (internal/cluster)
// with one client agent per node, each node with its own state directory,
// one ledger shared by every node, a watcher that closes the ledger runs of
// actions killed without a word, and the checks every fault ends with.

// Generous deadlines: the machine is a loaded 2-core one.
const (
	// settleTimeout bounds the wait for sessions to go and actions to end
	// once a fault is over.
	settleTimeout = 90 * time.Second
	// watchInterval is how often the watcher looks for actions that died.
	watchInterval = 50 * time.Millisecond
)

// faultCluster is a cluster with one ct-supervise node per client agent.
type faultCluster struct {
	t     *testing.T
	c     *cluster.Cluster
	nodes []*node // nodes[i] talks to c.Nodes[i] and bears its name
}

// newFaultCluster starts a cluster for the test (stopped when it ends) and
// one node per client agent.
func newFaultCluster(t *testing.T, opts cluster.Options) *faultCluster {
	t.Helper()
	needConsul(t)
	return (&faultCluster{c: cluster.ForTest(t, opts)}).sub(t)
}

// sub returns the cluster with fresh nodes (new state directories) for a
// test or subtest: subtests that share a cluster share nothing else, and
// each stops its own workers when it ends.
func (fc *faultCluster) sub(t *testing.T) *faultCluster {
	t.Helper()
	out := &faultCluster{t: t, c: fc.c}
	for _, a := range fc.c.Nodes {
		n := newNodeOn(t, a.Name, a.Addr())
		n.logOnFailure()
		out.nodes = append(out.nodes, n)
	}
	return out
}

// agentOf is the Consul agent of node n.
func (fc *faultCluster) agentOf(n *node) *cluster.Agent { return fc.c.Node(n.name) }

// ready waits until the cluster is whole again after a fault.
func (fc *faultCluster) ready() {
	fc.t.Helper()
	if err := fc.c.WaitReady(cluster.DefaultStartTimeout); err != nil {
		fc.t.Fatal(err)
	}
}

// put writes a key through a server.
func (fc *faultCluster) put(key, value string) {
	fc.t.Helper()
	client, err := fc.c.ServerClient()
	if err != nil {
		fc.t.Fatal(err)
	}
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		fc.t.Fatalf("putting %s: %v", key, err)
	}
}

// sessionsOf returns the IDs of the sessions held through node's agent.
func (fc *faultCluster) sessionsOf(nodeName string) []string {
	client, err := fc.c.ServerClient()
	if err != nil {
		return nil
	}
	all, _, err := client.Session().Node(nodeName, nil)
	if err != nil {
		return nil
	}
	var ids []string
	for _, s := range all {
		ids = append(ids, s.ID)
	}
	return ids
}

// sessionGone reports whether the servers no longer know session id.
func (fc *faultCluster) sessionGone(id string) bool {
	client, err := fc.c.ServerClient()
	if err != nil {
		return false
	}
	s, _, err := client.Session().Info(id, nil)
	return err == nil && s == nil
}

// sessions lists every session the servers know, as "NAME ID (NODE)".
func (fc *faultCluster) sessions() ([]string, error) {
	client, err := fc.c.ServerClient()
	if err != nil {
		return nil, err
	}
	all, _, err := client.Session().List(nil)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range all {
		out = append(out, fmt.Sprintf("%s %s (%s)", s.Name, s.ID, s.Node))
	}
	return out, nil
}

// checkNoSessions waits until no session is left in the cluster: those of a
// dead or frozen holder go when the servers declare its node failed, or
// when the next process on the node cleans up after it.
func (fc *faultCluster) checkNoSessions(report func(string, ...any)) {
	fc.t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		left, err := fc.sessions()
		if err == nil && len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			report("sessions left behind after %s: %v (%v)", settleTimeout, left, err)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// faultAction is the stand-in for a reload in the fault tests. Like
// ledgerAction it writes "NODE start UNIXNANO SEEN" and "NODE end UNIXNANO"
// to a ledger, so that parseLedger and maxConcurrency apply. Unlike it, it
// writes its end line when stopped with SIGTERM (the way ct-supervise stops
// a command), and a watcher writes the end line of an action that died
// without writing one (SIGKILL): a run is closed when its process is gone,
// never earlier, so overlaps in the ledger are real ones.
type faultAction struct {
	t      *testing.T
	script string
	ledger string
	pids   string // "PID NODE START" of every action started

	mu     sync.Mutex
	closed map[int]bool // pids whose end is in the ledger, or being written
}

// faultScript is the action: fault-action.sh LEDGER PIDS MILLISECONDS
// [SEEN]. SEEN defaults to the value= line of $CT_SUPERVISE_IT_DEST, as in
// ledgerAction. It sleeps in short steps, so that a trapped SIGTERM is
// handled within a tenth of a second.
const faultScript = `#!/bin/sh
ledger=$1 pids=$2 ms=$3 seen=$4
if [ -z "$seen" ]; then
	seen=$(sed -n 's/^value=//p' "$CT_SUPERVISE_IT_DEST" 2>/dev/null | head -n 1)
fi
trap 'echo "$CT_SUPERVISE_NODE end $(date +%s%N) stopped" >> "$ledger"; exit 143' TERM INT HUP
now=$(date +%s%N)
echo "$CT_SUPERVISE_NODE start $now ${seen:--}" >> "$ledger"
echo "$$ $CT_SUPERVISE_NODE $now" >> "$pids"
until=$((now + ms * 1000000))
while [ "$(date +%s%N)" -lt "$until" ]; do sleep 0.1; done
echo "$CT_SUPERVISE_NODE end $(date +%s%N)" >> "$ledger"
`

// newFaultAction writes the action script and starts its watcher, which
// stops when the test ends.
func newFaultAction(t *testing.T) *faultAction {
	t.Helper()
	dir := t.TempDir()
	a := &faultAction{
		t:      t,
		script: filepath.Join(dir, "fault-action.sh"),
		ledger: filepath.Join(dir, "ledger"),
		pids:   filepath.Join(dir, "pids"),
		closed: map[int]bool{},
	}
	if err := os.WriteFile(a.script, []byte(faultScript), 0o700); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(watchInterval):
				a.closeDead()
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-stopped
		if t.Failed() {
			t.Logf("ledger:\n%s", strings.Join(lines(a.ledger), "\n"))
		}
	})
	return a
}

// command is the action's command line: it runs for d and records seen
// ("" for the node's rendered value).
func (a *faultAction) command(d time.Duration, seen string) string {
	// exec: the script itself is the command's process, so its trap runs
	// before ct-supervise, seeing the command exit, kills what is left of
	// its process group.
	cmd := fmt.Sprintf("exec sh %s %s %s %d", shell.Quote(a.script), shell.Quote(a.ledger), shell.Quote(a.pids), d.Milliseconds())
	if seen != "" {
		cmd += " " + shell.Quote(seen)
	}
	return cmd
}

// started returns every action process started so far.
func (a *faultAction) started() map[int]actionProc {
	out := map[int]actionProc{}
	for _, l := range lines(a.pids) {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		start, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 == nil && err2 == nil {
			out[pid] = actionProc{pid: pid, node: f[1], start: start}
		}
	}
	return out
}

// actionProc is one action process: its node and when its run started,
// which tells its run from those of other processes of the node.
type actionProc struct {
	pid   int
	node  string
	start int64
}

// alive reports whether pid is one of our actions and not yet dead (a
// zombie is dead). Checking the command line guards against pid reuse.
func (a *faultAction) alive(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(a.script)) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// closeDead writes the end line of every action that died without writing
// its own. An action writes its end line before it exits, so once its
// process is gone, its run is either closed in the ledger or never will be.
func (a *faultAction) closeDead() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for pid, p := range a.started() {
		if a.closed[pid] || a.alive(pid) {
			continue
		}
		a.closed[pid] = true
		runs, err := parseLedger(lines(a.ledger))
		if err != nil {
			continue // the checks report it
		}
		for _, r := range runs {
			if r.node != p.node || r.start != p.start || r.end != 0 {
				continue
			}
			f, err := os.OpenFile(a.ledger, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				continue
			}
			fmt.Fprintf(f, "%s end %d killed\n", p.node, time.Now().UnixNano())
			f.Close()
		}
	}
}

// runs parses the ledger as it stands.
func (a *faultAction) runs() []ledgerRun {
	a.t.Helper()
	runs, err := parseLedger(lines(a.ledger))
	if err != nil {
		a.t.Fatal(err)
	}
	return runs
}

// checkLimit fails the test if more than limit actions ever ran at once.
// It returns the peak.
func (a *faultAction) checkLimit(limit int, report func(string, ...any)) int {
	a.t.Helper()
	runs := a.runs()
	peak := maxConcurrency(runs)
	if peak > limit {
		report("%d actions ran at once across nodes, the limit is %d:\n%s", peak, limit, timeline(runs))
	}
	return peak
}

// checkNoOrphans waits until every action process is gone: one that
// outlives the process that started it, or the test, is an orphan.
func (a *faultAction) checkNoOrphans(report func(string, ...any)) {
	a.t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		var left []string
		for pid, p := range a.started() {
			if a.alive(pid) {
				left = append(left, fmt.Sprintf("%d (%s)", pid, p.node))
			}
		}
		if len(left) == 0 {
			a.closeDead()
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(left)
			report("actions still running %s after the fault: %v", settleTimeout, left)
			for _, p := range left {
				pid, _ := strconv.Atoi(strings.Fields(p)[0])
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// completed reports whether node ran an action that saw seen to its end,
// neither stopped nor killed.
func (a *faultAction) completed(nodeName, seen string) bool {
	open := map[string]string{} // node -> seen of its open run
	for _, l := range lines(a.ledger) {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != nodeName {
			continue
		}
		switch f[1] {
		case "start":
			open[f[0]] = strings.Join(f[3:], " ")
		case "end":
			if len(f) == 3 && open[f[0]] == seen {
				return true
			}
			delete(open, f[0])
		}
	}
	return false
}

// attempt is one finished `ct-supervise` invocation of a driver.
type attempt struct {
	args       []string
	code       int
	stderr     string
	start, end time.Time
}

// startProc starts argv on the node (its environment) in a process group
// of its own, collecting its standard error; its output is discarded.
func (n *node) startProc(argv ...string) (*exec.Cmd, *bytes.Buffer, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = n.env
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return cmd, &errb, nil
}

// driver runs a command line (ct-supervise or consul lock) on a node in
// the background, again
// while it fails, up to a number of attempts: the way a worker retries an
// action whose lock was lost.
type driver struct {
	node     *node
	done     chan struct{}
	mu       sync.Mutex
	attempts []attempt
}

// driveBackoff is the pause between two attempts of a driver.
const driveBackoff = time.Second

// drive starts a driver. args gets the attempt number (1-based) and returns
// the command line of that attempt.
func drive(t *testing.T, n *node, maxAttempts int, args func(attempt int) []string) *driver {
	d := &driver{node: n, done: make(chan struct{})}
	var (
		mu      sync.Mutex
		current *exec.Cmd
		ended   bool
	)
	t.Cleanup(func() {
		mu.Lock()
		ended = true
		if current != nil {
			_ = syscall.Kill(-current.Process.Pid, syscall.SIGKILL)
		}
		mu.Unlock()
		<-d.done
	})
	go func() {
		defer close(d.done)
		for i := 1; i <= maxAttempts; i++ {
			mu.Lock()
			if ended {
				mu.Unlock()
				return
			}
			a := attempt{args: args(i), start: time.Now()}
			cmd, errb, err := n.startProc(a.args...)
			if err != nil {
				mu.Unlock()
				a.code, a.stderr = -1, err.Error()
				d.add(a)
				return
			}
			current = cmd
			mu.Unlock()
			err = cmd.Wait()
			a.end, a.stderr = time.Now(), errb.String()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				a.code = ee.ExitCode()
			}
			d.add(a)
			if a.code == 0 {
				return
			}
			time.Sleep(driveBackoff)
		}
	}()
	return d
}

func (d *driver) add(a attempt) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.attempts = append(d.attempts, a)
}

// wait waits for the driver to finish and returns its attempts; it fails
// the test if that takes longer than timeout.
func (d *driver) wait(t *testing.T, timeout time.Duration) []attempt {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		t.Fatalf("%s: ct-supervise still running after %s; attempts so far:\n%s", d.node.name, timeout, d.report())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.attempts)
}

// succeeded reports whether the driver's last attempt exited 0.
func (d *driver) succeeded() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.attempts) > 0 && d.attempts[len(d.attempts)-1].code == 0
}

// report describes every attempt, for failure messages and logs.
func (d *driver) report() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for i, a := range d.attempts {
		fmt.Fprintf(&b, "  %s attempt %d: exit %d after %s: %s\n", d.node.name, i+1, a.code,
			a.end.Sub(a.start).Round(time.Millisecond), strings.TrimSpace(tail(a.stderr, 2000)))
	}
	return b.String()
}

// firstStartAfter is the first start of a run in the ledger at or after
// t0 by a node other than except, and its node; ok is false if none.
func firstStartAfter(runs []ledgerRun, t0 time.Time, except string) (at time.Time, nodeName string, ok bool) {
	for _, r := range runs {
		if r.node != except && r.start >= t0.UnixNano() && (!ok || r.start < at.UnixNano()) {
			at, nodeName, ok = time.Unix(0, r.start), r.node, true
		}
	}
	return at, nodeName, ok
}

// runOf returns the run of node that was under way at instant t0.
func runOf(runs []ledgerRun, nodeName string, t0 time.Time) (ledgerRun, bool) {
	for _, r := range runs {
		if r.node == nodeName && r.start <= t0.UnixNano() && (r.end == 0 || r.end > t0.UnixNano()) {
			return r, true
		}
	}
	return ledgerRun{}, false
}

// restart stops consul-template (SIGTERM to its process group, as a
// service manager would) and starts it again with the same configuration
// and environment. The detached worker is not in the group and lives on.
func (p *ctNode) restart() {
	p.t.Helper()
	p.stop()
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "==== restarted by the test at %s\n", time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(p.cmd.Path, p.cmd.Args[1:]...)
	cmd.Dir, cmd.Env = p.cmd.Dir, p.cmd.Env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("restarting consul-template of %s: %v", p.name, err)
	}
	p.cmd, p.done, p.waitErr = cmd, make(chan struct{}), nil
	done := p.done
	go func() {
		err := cmd.Wait()
		p.waitErr = err
		close(done)
	}()
}

// TestFaultActionLedger checks the fault action and its watcher, which
// every fault's checks rest on: a run ends in the ledger when its action
// completes, when it is stopped with SIGTERM, and when it is killed
// without a word (the watcher writes that end).
func TestFaultActionLedger(t *testing.T) {
	act := newFaultAction(t)
	start := func(node string, d time.Duration) *exec.Cmd {
		cmd := exec.Command("/bin/sh", "-c", act.command(d, "x"))
		cmd.Env = append(os.Environ(), "CT_SUPERVISE_NODE="+node)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	done := start("done", 100*time.Millisecond)
	stopped := start("stopped", time.Minute)
	killed := start("killed", time.Minute)
	waitFor(t, 10*time.Second, "three runs to start", func() bool { return len(act.runs()) == 3 })
	var left []string
	for _, p := range act.started() {
		if act.alive(p.pid) {
			left = append(left, p.node)
		}
	}
	if !slices.Contains(left, "stopped") || !slices.Contains(left, "killed") {
		t.Fatalf("live actions %v, want stopped and killed among them", left)
	}
	_ = done.Wait()
	_ = stopped.Process.Signal(syscall.SIGTERM)
	_ = stopped.Wait()
	_ = killed.Process.Kill()
	_ = killed.Wait()
	waitFor(t, 10*time.Second, "every run to end in the ledger", func() bool {
		for _, r := range act.runs() {
			if r.end == 0 {
				return false
			}
		}
		return true
	})
	ends := map[string]string{}
	for _, l := range lines(act.ledger) {
		if f := strings.Fields(l); len(f) >= 3 && f[1] == "end" {
			ends[f[0]] = strings.Join(f[3:], " ")
		}
	}
	want := map[string]string{"done": "", "stopped": "stopped", "killed": "killed"}
	for node, how := range want {
		if got, ok := ends[node]; !ok || got != how {
			t.Errorf("%s's run ended as %q (recorded: %t), want %q", node, got, ok, how)
		}
	}
	if !act.completed("done", "x") || act.completed("stopped", "x") || act.completed("killed", "x") {
		t.Error("completed() does not tell a finished run from a stopped or killed one")
	}
	act.checkNoOrphans(t.Errorf)
}
