package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ct-supervise/internal/overlap"
	"ct-supervise/internal/shell"
	"ct-supervise/worker"
)

// This file is the consul-template harness: real consul-template processes
// ("nodes"), each with its own ct-supervise state directory, rendering
// against the package's Consul agent, plus the ledger that the stand-in
// action writes and the checks made on it.

// ctStopGrace is how long a consul-template process gets between SIGTERM
// and SIGKILL when a test ends.
const ctStopGrace = 5 * time.Second

// ctLogTail bounds how much of each consul-template log a failing test
// prints: with eight debug-level nodes the whole of every log would bury
// the failure.
const ctLogTail = 16 << 10

// needConsulTemplate skips (outside CI only) when there is no consul-template
// binary, as needConsul does for consul.
func needConsulTemplate(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("consul-template"); err != nil {
		msg := "consul-template not found on PATH: run `make test`, or put the directory printed by scripts/tools.sh on PATH"
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (integration tests never skip under CI=true)", msg)
		}
		t.Skipf("skipping: %s", msg)
	}
}

// ctTemplate is one template block of a consul-template configuration.
type ctTemplate struct {
	// name names the source (name.ctmpl) and destination (name.out) files.
	name string
	// body is the template text.
	body string
	// command is the post-render command; empty for none.
	command string
}

// ctNode is one consul-template process with its own state directory.
type ctNode struct {
	*node
	dir     string // config, sources, destinations and the log
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // the process's exit, once done is closed
}

// startConsulTemplate writes a configuration for tmpls and starts
// consul-template on it as node name. The process runs in its own process
// group with the node's environment, so the plugin and the commands find
// the ct-supervise under test first on PATH and the node's state directory
// in CT_SUPERVISE_STATE_DIR. CT_SUPERVISE_IT_DEST names the destination of
// the first template, for the ledger action. With once, consul-template
// renders once and exits (-once). The process is stopped, and its worker
// after it, when the test ends, however it ends.
func startConsulTemplate(t *testing.T, name string, tmpls []ctTemplate, once bool) *ctNode {
	t.Helper()
	needConsulTemplate(t)
	n := newNode(t, name) // registers the worker's stop first, so it runs last
	return startConsulTemplateOn(t, n, tmpls, once)
}

// startConsulTemplateOn is startConsulTemplate on an existing node, so that
// a test can restart consul-template on the same state directory.
func startConsulTemplateOn(t *testing.T, n *node, tmpls []ctTemplate, once bool) *ctNode {
	t.Helper()
	needConsulTemplate(t)
	p := &ctNode{node: n, dir: t.TempDir(), done: make(chan struct{})}
	p.logPath = filepath.Join(p.dir, "consul-template.log")

	var cfg strings.Builder
	// Debug level logs every render and command, which is what a failing
	// test needs to tell a missed render from a missed run.
	// consul-template's own kill signal is SIGINT; SIGTERM it would only
	// pass on to an exec child, so stop would never stop it.
	fmt.Fprintf(&cfg, "log_level   = \"debug\"\nkill_signal = \"SIGTERM\"\n\nconsul {\n  address = %q\n}\n", n.addr)
	for _, tm := range tmpls {
		src := filepath.Join(p.dir, tm.name+".ctmpl")
		if err := os.WriteFile(src, []byte(tm.body), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "\ntemplate {\n  source      = %q\n  destination = %q\n", src, p.dest(tm.name))
		if tm.command != "" {
			// The default timeout, spelled out: it is what an exec that
			// waited for the lock would run into.
			fmt.Fprintf(&cfg, "  command     = %q\n  command_timeout = \"30s\"\n", tm.command)
		}
		cfg.WriteString("}\n")
	}
	cfgPath := filepath.Join(p.dir, "config.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor

	args := []string{"-config=" + cfgPath}
	if once {
		args = append(args, "-once")
	}
	p.cmd = exec.Command("consul-template", args...)
	p.cmd.Dir = p.dir
	p.cmd.Env = append(slices.Clone(n.env),
		"PATH="+filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"CT_SUPERVISE_IT_DEST="+p.dest(tmpls[0].name),
		// The race-enabled ct-supervise otherwise sleeps a second on every
		// successful exit, and consul-template calls it several times per
		// render: renders would trail KV changes by seconds.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
	)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting consul-template for %s: %v", n.name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	n.logOnFailure()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("consul-template log of %s:\n%s", n.name, tail(p.log(), ctLogTail))
		}
	})
	return p
}

// dest is the destination path of the named template.
func (p *ctNode) dest(name string) string { return filepath.Join(p.dir, name+".out") }

// readDest returns the rendered file of the named template, "" if it does
// not exist yet.
func (p *ctNode) readDest(name string) string {
	b, err := os.ReadFile(p.dest(name))
	if err != nil {
		return ""
	}
	return string(b)
}

// running reports whether consul-template has not exited.
func (p *ctNode) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits up to timeout for consul-template to exit and returns its exit
// status; exited is false if it is still running.
func (p *ctNode) wait(timeout time.Duration) (code int, exited bool) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	var ee *exec.ExitError
	switch {
	case p.waitErr == nil:
		return 0, true
	case errors.As(p.waitErr, &ee):
		return ee.ExitCode(), true
	default:
		return -1, true
	}
}

// log returns consul-template's output so far.
func (p *ctNode) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// stop ends consul-template and whatever plugin or command it is running:
// SIGTERM to the process group, SIGKILL after ctStopGrace. The detached
// worker is not in the group; newNode's cleanup stops it afterwards.
func (p *ctNode) stop() {
	if !p.running() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(ctStopGrace):
		p.t.Errorf("consul-template of %s did not stop on SIGTERM within %s; killing it", p.name, ctStopGrace)
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// fleet is a set of consul-template nodes sharing one template, one action
// and one ledger.
type fleet struct {
	t      *testing.T
	nodes  []*ctNode
	ledger string
}

// startFleet starts count nodes, named node-1 to node-N, on the same
// template. tmpl gets the action's command line.
func startFleet(t *testing.T, count int, actionSeconds string, tmpl func(action string) ctTemplate) *fleet {
	t.Helper()
	f := &fleet{t: t}
	action := ledgerAction(t, actionSeconds)
	f.ledger = action.ledger
	for i := 1; i <= count; i++ {
		f.nodes = append(f.nodes, startConsulTemplate(t, fmt.Sprintf("node-%d", i), []ctTemplate{tmpl(action.command)}, false))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ledger:\n%s", strings.Join(lines(f.ledger), "\n"))
		}
	})
	return f
}

// runs parses the ledger as it stands.
func (f *fleet) runs() []ledgerRun {
	f.t.Helper()
	runs, err := parseLedger(lines(f.ledger))
	if err != nil {
		f.t.Fatal(err)
	}
	return runs
}

// idle reports whether no node has a worker, that is every queue is empty.
func (f *fleet) idle() bool {
	for _, n := range f.nodes {
		if n.busy() {
			return false
		}
	}
	return true
}

// busy reports whether a worker holds the node's state directory. It asks
// the worker lock, as ct-supervise itself does, rather than signalling the
// pid: an exited worker is a zombie until init reaps it.
func (p *ctNode) busy() bool {
	pid, err := worker.RunningPIDIn(p.stateDir)
	return err != nil || pid != 0
}

// allRunning fails the test if a consul-template process has exited.
func (f *fleet) allRunning() {
	f.t.Helper()
	for _, n := range f.nodes {
		if !n.running() {
			code, _ := n.wait(0)
			f.t.Errorf("consul-template of %s exited (status %d)", n.name, code)
		}
	}
}

// waitRoll waits until every node has finished a run that saw value and no
// worker is left with anything queued. It returns the runs that started at
// index from of the ledger or later.
func (f *fleet) waitRoll(from int, value string, timeout time.Duration) []ledgerRun {
	f.t.Helper()
	waitFor(f.t, timeout, fmt.Sprintf("every node to run the action with %q rendered, and its queue to drain", value), func() bool {
		runs := f.runs()
		if from > len(runs) {
			f.t.Fatalf("the ledger shrank from %d to %d runs", from, len(runs))
		}
		last := map[string]ledgerRun{}
		for _, r := range runs[from:] {
			last[r.node] = r
		}
		for _, n := range f.nodes {
			if r, ok := last[n.name]; !ok || r.end == 0 || r.seen != value {
				return false
			}
		}
		return f.idle()
	})
	return f.runs()[from:]
}

// action is the ledger-writing stand-in for `nginx -s reload`.
type action struct {
	command string // the command line to declare
	ledger  string // the shared ledger file
}

// ledgerAction writes the action script and returns its command line: it
// appends "NODE start UNIXNANO SEEN" to the ledger, sleeps seconds, and
// appends "NODE end UNIXNANO". NODE is $CT_SUPERVISE_NODE and SEEN the
// value= line of the node's rendered file ($CT_SUPERVISE_IT_DEST) when the
// run started, "-" if there is none. The start line is written after the
// lock is acquired and the end line before it is released, so the ledger's
// intervals lie within the lock's: overlaps in the ledger are real ones.
// Each echo is a single short append, which POSIX keeps whole among
// concurrent writers.
func ledgerAction(t *testing.T, seconds string) action {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "action.sh")
	ledger := filepath.Join(dir, "ledger")
	const body = `#!/bin/sh
# Usage: action.sh LEDGER SECONDS
seen=$(sed -n 's/^value=//p' "$CT_SUPERVISE_IT_DEST" 2>/dev/null | head -n 1)
echo "$CT_SUPERVISE_NODE start $(date +%s%N) ${seen:--}" >> "$1"
sleep "$2"
echo "$CT_SUPERVISE_NODE end $(date +%s%N)" >> "$1"
`
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return action{
		command: fmt.Sprintf("sh %s %s %s", shell.Quote(script), shell.Quote(ledger), seconds),
		ledger:  ledger,
	}
}

// ledgerRun is one run of the action as the ledger recorded it.
type ledgerRun struct {
	node       string
	start, end int64 // unix nanoseconds; end is 0 while the run is under way
	seen       string
}

// parseLedger pairs the start and end lines of each node into runs, in the
// order they started. It rejects malformed lines, an end without a start,
// and a node starting a run while its previous one is still going: the
// ledger records one action, which a node never runs twice at once, so that
// would be a bug in itself.
func parseLedger(ls []string) ([]ledgerRun, error) {
	var runs []ledgerRun
	open := map[string]int{} // node -> index of its unfinished run
	for i, l := range ls {
		f := strings.Fields(l)
		if len(f) < 3 {
			return nil, fmt.Errorf("ledger line %d %q: want \"NODE start|end UNIXNANO [SEEN]\"", i+1, l)
		}
		node, event := f[0], f[1]
		at, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || at <= 0 {
			return nil, fmt.Errorf("ledger line %d %q: bad timestamp (does `date +%%s%%N` work here?)", i+1, l)
		}
		switch event {
		case "start":
			if j, ok := open[node]; ok {
				return nil, fmt.Errorf("ledger line %d: %s started a run while its run started at %d was still going", i+1, node, runs[j].start)
			}
			runs = append(runs, ledgerRun{node: node, start: at, seen: strings.Join(f[3:], " ")})
			open[node] = len(runs) - 1
		case "end":
			j, ok := open[node]
			if !ok {
				return nil, fmt.Errorf("ledger line %d: %s ended a run it never started", i+1, node)
			}
			if at < runs[j].start {
				return nil, fmt.Errorf("ledger line %d: %s's run ends before it starts", i+1, node)
			}
			runs[j].end = at
			delete(open, node)
		default:
			return nil, fmt.Errorf("ledger line %d %q: event %q is neither start nor end", i+1, l, event)
		}
	}
	return runs, nil
}

// maxConcurrency is the largest number of runs under way at one instant
// (see overlap.Max); a run still going counts until the end of time.
func maxConcurrency(runs []ledgerRun) int {
	return overlap.Max(runs, func(r ledgerRun) (int64, int64) { return r.start, r.end })
}

// runsByNode groups runs by node, each node's in order.
func runsByNode(runs []ledgerRun) map[string][]ledgerRun {
	m := map[string][]ledgerRun{}
	for _, r := range runs {
		m[r.node] = append(m[r.node], r)
	}
	return m
}

// timeline renders runs relative to the first start, for failure messages.
func timeline(runs []ledgerRun) string {
	if len(runs) == 0 {
		return "  (no runs)"
	}
	t0 := runs[0].start
	for _, r := range runs {
		t0 = min(t0, r.start)
	}
	var b strings.Builder
	for _, r := range runs {
		end := "running"
		if r.end != 0 {
			end = fmt.Sprintf("+%.3fs", time.Duration(r.end-t0).Seconds())
		}
		fmt.Fprintf(&b, "  %-8s +%.3fs .. %-9s saw %s\n", r.node, time.Duration(r.start-t0).Seconds(), end, r.seen)
	}
	return b.String()
}

// tail returns the last n bytes of s, marked as cut when it is.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[... " + strconv.Itoa(len(s)-n) + " bytes cut ...]\n" + s[len(s)-n:]
}
