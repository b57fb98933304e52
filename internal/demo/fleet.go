package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"ct-supervise/internal/shell"
	"ct-supervise/worker"
)

const (
	// reloadScript is the stand-in for `nginx -s reload`, on the nodes' PATH.
	reloadScript = "reload-app"

	// stopGrace is how long a process gets between SIGTERM and SIGKILL.
	// A worker needs a moment to release its lock and destroy its session.
	stopGrace = 10 * time.Second

	// pollInterval is how often the ledger and the workers are looked at.
	// The timeline's times are when the demo saw a line, so this is their
	// resolution.
	pollInterval = 10 * time.Millisecond
)

// fleet is the consul-template nodes and what they share: the directory
// with ct-supervise and the reload script on PATH, and the ledger the
// script writes.
type fleet struct {
	dir        string
	bin        string
	consulAddr string
	action     time.Duration

	pluginCall string // the template line declaring the action, for display
	ledger     *ledger
	nodes      []*ctNode
}

// ctNode is one consul-template process with its own state directory, as
// one machine of a real fleet would have.
type ctNode struct {
	name     string
	dir      string
	stateDir string
	logPath  string
	env      []string
	cmd      *exec.Cmd
	done     chan struct{}
}

// start writes the shared files and starts count nodes.
func (f *fleet) start(count, limit int) error {
	binDir := filepath.Join(f.dir, "bin")
	if err := os.Mkdir(binDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", binDir, err)
	}
	// consul-template looks the plugin up by the name "ct-supervise" on its
	// PATH, whatever the binary under test is called.
	if err := os.Symlink(f.bin, filepath.Join(binDir, "ct-supervise")); err != nil {
		return fmt.Errorf("linking ct-supervise: %w", err)
	}
	f.ledger = &ledger{path: filepath.Join(f.dir, "ledger")}
	script := fmt.Sprintf(`#!/bin/sh
# The demo's "reload": it only records when it runs, for the timeline.
echo "$CT_SUPERVISE_DEMO_NODE start" >> %[1]s
sleep %.3[2]f
echo "$CT_SUPERVISE_DEMO_NODE end" >> %[1]s
`, shell.Quote(f.ledger.path), f.action.Seconds())
	if err := os.WriteFile(filepath.Join(binDir, reloadScript), []byte(script), 0o700); err != nil {
		return fmt.Errorf("writing the reload script: %w", err)
	}

	f.pluginCall = fmt.Sprintf(`{{ plugin "ct-supervise" "register" "-n=%d" "-name=%s" "%s" }}`, limit, actionName, reloadScript)
	tmpl := "# upstreams of {{ env \"CT_SUPERVISE_DEMO_NODE\" }}, rendered by consul-template\n" +
		f.pluginCall + "\n" +
		"upstream app {\n  server {{ key \"" + upstreamKey + "\" }};\n}\n"

	path := binDir + string(os.PathListSeparator) + os.Getenv("PATH")
	for i := 1; i <= count; i++ {
		n, err := f.startNode(fmt.Sprintf("node-%d", i), tmpl, path)
		if err != nil {
			return err
		}
		f.nodes = append(f.nodes, n)
	}
	return nil
}

func (f *fleet) startNode(name, tmpl, path string) (*ctNode, error) {
	n := &ctNode{name: name, dir: filepath.Join(f.dir, name), done: make(chan struct{})}
	n.stateDir = filepath.Join(n.dir, "state")
	n.logPath = filepath.Join(n.dir, "consul-template.log")
	// ct-supervise refuses a state directory others can write to.
	if err := os.MkdirAll(n.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", n.stateDir, err)
	}
	src := filepath.Join(n.dir, "upstreams.ctmpl")
	if err := os.WriteFile(src, []byte(tmpl), 0o600); err != nil {
		return nil, fmt.Errorf("writing the template of %s: %w", name, err)
	}
	// kill_signal: consul-template's default, SIGINT, would leave our
	// SIGTERM to be passed on to an exec child instead of stopping it.
	hcl := fmt.Sprintf(`log_level   = "info"
kill_signal = "SIGTERM"

consul {
  address = %q
}

template {
  source      = %q
  destination = %q
  command     = "ct-supervise exec"
}
`, f.consulAddr, src, filepath.Join(n.dir, "upstreams.conf"))
	cfg := filepath.Join(n.dir, "config.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("writing the configuration of %s: %w", name, err)
	}

	// Each process gets its node's state directory and the dev agent's
	// address; CONSUL_* settings for a real cluster (a token, TLS) must not
	// leak in. consul-template passes its environment on to the plugin, to
	// `ct-supervise exec` and so to the worker and the reload script.
	n.env = append(cleanEnv(),
		"PATH="+path,
		"CONSUL_HTTP_ADDR="+f.consulAddr,
		"CT_SUPERVISE_STATE_DIR="+n.stateDir,
		"CT_SUPERVISE_DEMO_NODE="+name,
	)
	logFile, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the log of %s: %w", name, err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	n.cmd = exec.Command("consul-template", "-config="+cfg)
	n.cmd.Dir = n.dir
	n.cmd.Env = n.env
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	// Its own process group: Ctrl-C in the terminal reaches the demo only,
	// which then stops the nodes in order, plugin and command children
	// included.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting consul-template for %s: %w", name, err)
	}
	go func() {
		_ = n.cmd.Wait()
		close(n.done)
	}()
	return n, nil
}

// cleanEnv is our environment without Consul or ct-supervise settings.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONSUL_") || strings.HasPrefix(kv, "CT_SUPERVISE_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// node returns the named node, nil if there is none.
func (f *fleet) node(name string) *ctNode {
	for _, n := range f.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// envLine is the shell command that runs ct-supervise with args as this
// node does.
func (n *ctNode) envLine(bin string, args ...string) string {
	var env []string
	for _, kv := range n.env {
		if strings.HasPrefix(kv, "CONSUL_HTTP_ADDR=") || strings.HasPrefix(kv, "CT_SUPERVISE_STATE_DIR=") {
			env = append(env, kv)
		}
	}
	return strings.Join(append(env, append([]string{bin}, args...)...), " ")
}

func (n *ctNode) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// workerPID is the pid of the node's ct-supervise worker: 0 if none runs,
// -1 if one is starting.
func (n *ctNode) workerPID() int {
	pid, err := worker.RunningPIDIn(n.stateDir)
	if err != nil {
		return 0
	}
	return pid
}

// logTail is the end of the node's consul-template log, for errors.
func (n *ctNode) logTail() string {
	b, _ := os.ReadFile(n.logPath)
	const max = 2000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

// waitRoll follows the ledger from event index from until every node has
// finished a reload there and no worker has anything left to do, calling
// onEvent (if not nil) for each new event. It returns the events from
// index from on.
func (f *fleet) waitRoll(ctx context.Context, from int, timeout time.Duration, onEvent func(event)) ([]event, error) {
	deadline := time.Now().Add(timeout)
	seen := from
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if err := f.ledger.poll(); err != nil {
			return nil, err
		}
		events := f.ledger.since(from)
		if onEvent != nil {
			for _, e := range f.ledger.since(seen) {
				onEvent(e)
			}
		}
		seen = f.ledger.len()
		if f.finished(events) {
			return events, nil
		}
		for _, n := range f.nodes {
			if n.exited() {
				return nil, fmt.Errorf("consul-template of %s exited; its log ends with:\n%s", n.name, n.logTail())
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("not every node reloaded within %s: %s", timeout, f.missing(events))
		}
		select {
		case <-ctx.Done():
			return nil, errInterrupted
		case <-ticker.C:
		}
	}
}

// finished reports whether every node has a finished reload among events
// and no worker runs.
func (f *fleet) finished(events []event) bool {
	running := map[string]int{}
	ended := map[string]bool{}
	for _, e := range events {
		if e.start {
			running[e.node]++
		} else {
			running[e.node]--
			ended[e.node] = true
		}
	}
	for _, n := range f.nodes {
		if !ended[n.name] || running[n.name] != 0 || n.workerPID() != 0 {
			return false
		}
	}
	return true
}

// missing names the nodes without a finished reload, for the timeout error.
func (f *fleet) missing(events []event) string {
	ended := map[string]bool{}
	for _, e := range events {
		if !e.start {
			ended[e.node] = true
		}
	}
	var names []string
	for _, n := range f.nodes {
		if !ended[n.name] {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "a worker is still busy"
	}
	return "no reload from " + strings.Join(names, ", ")
}

// stop stops every node's consul-template, then every worker. The second
// sweep of workers catches one that an exec, killed with its
// consul-template, had just spawned.
func (f *fleet) stop(out io.Writer) {
	var wg sync.WaitGroup
	for _, n := range f.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			terminate(n.cmd.Process.Pid, true, n.done, func(err error) {
				fmt.Fprintf(out, "stopping consul-template of %s: %v\n", n.name, err)
			})
		}()
	}
	wg.Wait()
	for range 2 {
		for _, n := range f.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stopWorker(n, out)
			}()
		}
		wg.Wait()
		time.Sleep(300 * time.Millisecond)
	}
}

// stopWorker stops the node's worker, if one runs. SIGTERM makes it stop
// its action, release the lock and exit; the action stays queued, which no
// longer matters.
func stopWorker(n *ctNode, out io.Writer) {
	pid := n.workerPID()
	for i := 0; pid == -1 && i < 20; i++ { // starting: its pid comes in a moment
		time.Sleep(50 * time.Millisecond)
		pid = n.workerPID()
	}
	if pid <= 0 {
		return
	}
	done := make(chan struct{})
	go func() {
		// Not our child, so no Wait: it is gone once it lets go of the
		// state directory's worker lock, which the kernel drops at exit
		// at the latest. (Signal 0 would still find it as a zombie until
		// init reaps it.)
		for n.workerPID() != 0 {
			time.Sleep(20 * time.Millisecond)
		}
		close(done)
	}()
	terminate(pid, false, done, func(err error) {
		fmt.Fprintf(out, "stopping the worker of %s (pid %d): %v\n", n.name, pid, err)
	})
}

// terminate sends SIGTERM to pid (its process group if group), waits for
// done, and sends SIGKILL after stopGrace.
func terminate(pid int, group bool, done <-chan struct{}, report func(error)) {
	target := pid
	if group {
		target = -pid
	}
	select {
	case <-done:
		return
	default:
	}
	if err := syscall.Kill(target, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		report(err)
	}
	select {
	case <-done:
	case <-time.After(stopGrace):
		report(fmt.Errorf("still running %s after SIGTERM; killing it", stopGrace))
		_ = syscall.Kill(target, syscall.SIGKILL)
		<-done
	}
}
