// Command demo shows ct-supervise rolling a reload across a fleet: a local
// Consul dev agent, a few consul-template "nodes" on this machine, one KV
// change, and the timeline of the reloads it triggers, at most -n at a
// time. `make demo` builds ct-supervise and runs it:
//
//	go run ./internal/demo -ct-supervise bin/ct-supervise
//
// It needs consul and consul-template on PATH (make demo puts the ones it
// builds there), listens on loopback only, and stops everything it started
// when it ends, fails or is interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// Exit statuses.
const (
	exitOK          = 0
	exitFailed      = 1 // the roll broke the limit, a node did not reload, or the demo could not run
	exitUsage       = 2
	exitInterrupted = 130
)

const (
	// upstreamKey is the KV key every node renders.
	upstreamKey = "demo/upstream"
	// actionName names the declared action, and so its lock prefix.
	actionName = "demo-reload"
)

// errInterrupted is returned when SIGINT or SIGTERM stopped the demo.
var errInterrupted = errors.New("interrupted")

// config is the command line.
type config struct {
	ctSupervise string
	nodes       int
	limit       int
	action      time.Duration
	hold        bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "ct-supervise demo: %v\n", err)
		return exitUsage
	}
	// Signals cancel ctx instead of killing us, so that whatever state the
	// demo is in, it gets to stop what it started.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	d := &demo{cfg: cfg, out: stdout}
	defer d.cleanup()
	err = d.run(ctx)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errInterrupted) || ctx.Err() != nil:
		fmt.Fprintln(stdout, "interrupted")
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "ct-supervise demo: %v\n", err)
		return exitFailed
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.ctSupervise, "ct-supervise", "bin/ct-supervise", "path of the ct-supervise binary to demonstrate (make build)")
	fs.IntVar(&cfg.nodes, "nodes", 5, "number of consul-template nodes")
	fs.IntVar(&cfg.limit, "n", 2, "how many nodes may reload at once")
	fs.DurationVar(&cfg.action, "action", time.Second, "how long each node's \"reload\" takes")
	fs.BoolVar(&cfg.hold, "hold", false, "keep everything running after the roll, for inspection, until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	switch {
	case fs.NArg() > 0:
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case cfg.nodes < 1 || cfg.nodes > 50:
		return cfg, fmt.Errorf("-nodes must be between 1 and 50, got %d", cfg.nodes)
	case cfg.limit < 1:
		return cfg, fmt.Errorf("-n must be at least 1, got %d", cfg.limit)
	case cfg.action < 0 || cfg.action > 10*time.Minute:
		return cfg, fmt.Errorf("-action must be between 0 and 10m, got %s", cfg.action)
	}
	return cfg, nil
}

// demo is one run: what it started, so that cleanup can stop it.
type demo struct {
	cfg config
	out io.Writer

	dir       string // everything on disk, removed by cleanup
	bin       string // the ct-supervise binary, absolute
	consulBin string
	agent     *devconsul.Agent
	client    *api.Client
	fleet     *fleet

	// reloadLedger is the file reload-app writes.
	reloadLedger string
}

func (d *demo) printf(format string, a ...any) { fmt.Fprintf(d.out, format, a...) }

func (d *demo) run(ctx context.Context) error {
	if err := d.startNodes(ctx); err != nil {
		return err
	}
	// The first render is a change too (there was no file before): every
	// node reloads once. Let that roll finish so the timeline below shows
	// one change only.
	start := time.Now()
	if _, err := d.fleet.waitRoll(ctx, 0, d.rollTimeout(), nil); err != nil {
		return fmt.Errorf("initial render: %w", err)
	}
	d.printf("initial render: every node rendered v1 and reloaded once (%.1fs)\n", time.Since(start).Seconds())

	verdict, err := d.changeUpstream(ctx)
	if err != nil {
		return err
	}

	d.printStatus(ctx, "node-1")
	if !d.cfg.hold && verdict == nil {
		if err := d.safeRestart(ctx); err != nil {
			return fmt.Errorf("safe restart: %w", err)
		}
		if err := d.badConfig(ctx); err != nil {
			return fmt.Errorf("bad config: %w", err)
		}
	}
	if !d.cfg.hold || verdict != nil {
		d.printf("\nTo inspect the nodes while they run, start the demo with -hold (make demo DEMO_FLAGS=-hold)\n"+
			"and, in another terminal:\n  CONSUL_HTTP_ADDR=<agent> CT_SUPERVISE_STATE_DIR=<demo dir>/node-N/state %s status\n",
			d.cfg.ctSupervise)
		return verdict
	}
	d.holdForInspection(ctx)
	return nil
}

// startNodes finds the binaries and starts the consul agent and the
// consul-template nodes.
func (d *demo) startNodes(ctx context.Context) error {
	var err error
	if d.consulBin, err = devconsul.FindBinary(""); err != nil {
		return fmt.Errorf("consul not found on PATH (or $CONSUL_BIN): run `make demo`, which builds it, or install consul v1.21.0")
	}
	if _, err := exec.LookPath("consul-template"); err != nil {
		return fmt.Errorf("consul-template not found on PATH: run `make demo`, which builds it, or install consul-template v0.41.1")
	}
	if d.bin, err = findCTSupervise(d.cfg.ctSupervise); err != nil {
		return err
	}
	if d.dir, err = os.MkdirTemp("", "ct-supervise-demo-"); err != nil {
		return fmt.Errorf("creating the demo directory: %w", err)
	}

	d.printf("ct-supervise demo: %d nodes, -n=%d, a %s \"reload\" each\n", d.cfg.nodes, d.cfg.limit, d.cfg.action)
	d.agent, err = devconsul.Start(devconsul.Options{Binary: d.consulBin, LogFile: filepath.Join(d.dir, "consul.log")})
	if err != nil {
		return fmt.Errorf("starting the consul dev agent (log in %s): %w", filepath.Join(d.dir, "consul.log"), err)
	}
	if ctx.Err() != nil {
		return errInterrupted
	}
	if d.client, err = d.agent.Client(); err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	d.printf("consul dev agent on %s\n", d.agent.Addr())

	if err := d.put(upstreamKey, "v1"); err != nil {
		return err
	}
	d.fleet = &fleet{dir: d.dir, bin: d.bin, consulAddr: d.agent.Addr(), action: d.cfg.action}
	if err := d.fleet.start(d.cfg.nodes, d.cfg.limit); err != nil {
		return err
	}
	d.reloadLedger = d.fleet.ledger.path
	d.printf("%d consul-template nodes render %s with this line in their template:\n  %s\n", d.cfg.nodes, upstreamKey, d.fleet.pluginCall)
	return nil
}

// changeUpstream changes the upstream key from v1 to v2, prints the roll
// as it happens and returns judge's verdict on it; err is a roll that did
// not finish.
func (d *demo) changeUpstream(ctx context.Context) (verdict, err error) {
	mark := d.fleet.ledger.len()
	d.printf("changing %s: v1 -> v2 ...\n", upstreamKey)
	changed := time.Now()
	if err := d.put(upstreamKey, "v2"); err != nil {
		return nil, err
	}
	running := 0
	events, err := d.fleet.waitRoll(ctx, mark, d.rollTimeout(), func(e event) {
		if e.start {
			running++
		} else {
			running--
		}
		what := "reload end  "
		if e.start {
			what = "reload start"
		}
		d.printf("  +%.2fs  %-8s %s   (running: %d)\n", e.at.Sub(changed).Seconds(), e.node, what, running)
	})
	if err != nil {
		return nil, fmt.Errorf("after the change: %w", err)
	}
	return d.judge(events, changed), nil
}

// holdForInspection prints how to inspect the running nodes and waits for Ctrl-C.
func (d *demo) holdForInspection(ctx context.Context) {
	n1 := d.fleet.nodes[0]
	d.printf("\nholding until Ctrl-C. In another terminal:\n"+
		"  %s   # any node-N\n"+
		"  CONSUL_HTTP_ADDR=%s %s kv put %s v3   # another roll\n"+
		"  tail -f %s   # the roll, as the demo reads it\n"+
		"Logs: %s, %s (node-N alike)\n",
		n1.envLine(d.bin, "status"), d.agent.Addr(), d.consulBin, upstreamKey, d.fleet.ledger.path,
		n1.logPath, filepath.Join(n1.stateDir, "worker.log"))
	<-ctx.Done()
	d.printf("\n")
}

// rollTimeout bounds a roll: the ideal time with a generous margin for slow
// machines, so that a stuck node is reported rather than waited for forever.
func (d *demo) rollTimeout() time.Duration {
	return 3*d.ideal() + 60*time.Second
}

// ideal is how long a roll takes if each wave of -n nodes starts the moment
// the previous one ends.
func (d *demo) ideal() time.Duration {
	waves := math.Ceil(float64(d.cfg.nodes) / float64(d.cfg.limit))
	return time.Duration(waves) * d.cfg.action
}

// judge prints the verdict on the roll after the change: every node
// reloaded, never more than -n at once. The error is the verdict's, for
// the exit status.
func (d *demo) judge(events []event, changed time.Time) error {
	perNode := map[string]int{}
	var last time.Time
	for _, e := range events {
		if e.start {
			perNode[e.node]++
		}
		last = e.at
	}
	peak := maxRunning(events)
	var problems []string
	twice := []string{}
	for _, n := range d.fleet.nodes {
		switch c := perNode[n.name]; {
		case c == 0:
			problems = append(problems, n.name+" did not reload")
		case c > 1:
			twice = append(twice, fmt.Sprintf("%s %d times", n.name, c))
		}
	}
	if peak > d.cfg.limit {
		problems = append(problems, fmt.Sprintf("%d nodes reloaded at once, the limit is %d", peak, d.cfg.limit))
	}
	if len(problems) > 0 {
		d.printf("FAILED: %s\n", strings.Join(problems, "; "))
		return errors.New("the roll did not keep its promises: " + strings.Join(problems, "; "))
	}
	once := "once"
	if len(twice) > 0 {
		once = "(" + strings.Join(twice, ", ") + ")"
	}
	d.printf("all %d nodes reloaded %s; never more than %d at a time; total %.1fs (ideal %.1fs)\n",
		d.cfg.nodes, once, peak, last.Sub(changed).Seconds(), d.ideal().Seconds())
	return nil
}

// printStatus shows what `ct-supervise status` says on one node.
func (d *demo) printStatus(ctx context.Context, nodeName string) {
	n := d.fleet.node(nodeName)
	if n == nil {
		return
	}
	d.printf("\n%s's view:\n$ %s\n", nodeName, n.envLine(d.cfg.ctSupervise, "status"))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, "status")
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	d.printf("%s", out)
	if err != nil {
		d.printf("(ct-supervise status: %v)\n", err)
	}
}

func (d *demo) put(key, value string) error {
	if _, err := d.client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// cleanup stops everything the demo started, in the order that leaves
// nothing behind: consul-template first, so that no new exec starts a
// worker; the workers next, while Consul is still there for them to release
// their locks; the agent; and last the files.
func (d *demo) cleanup() {
	if d.fleet != nil {
		d.fleet.stop(d.out)
	}
	if d.agent != nil {
		d.agent.Stop()
	}
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			d.printf("removing %s: %v\n", d.dir, err)
		}
	}
	if d.agent != nil || d.fleet != nil {
		d.printf("stopped the consul-template nodes, their ct-supervise workers and the consul agent; removed %s\n", d.dir)
	}
}

// findCTSupervise checks the binary to demonstrate and makes its path
// absolute: consul-template and the workers run in other directories.
func findCTSupervise(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("ct-supervise binary %q: %w", path, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("ct-supervise binary %s not found: run `make build`, or pass -ct-supervise PATH", path)
	case err != nil:
		return "", fmt.Errorf("ct-supervise binary: %w", err)
	case fi.IsDir() || fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("ct-supervise binary %s is not an executable file", path)
	}
	return abs, nil
}
