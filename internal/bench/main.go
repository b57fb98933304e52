// Command bench measures ct-supervise against `consul lock` on a real Consul
// dev agent, all on loopback, and prints one markdown table (also written as
// JSON). Run it with `make bench` (about 3 minutes on 2 cores; `make bench
// BENCH_FLAGS=-quick` for about one), which builds bin/ct-supervise and this
// command, and runs it from the module root with the pinned consul binary on
// PATH:
//
//	bench -ct-supervise bin/ct-supervise [-quick] [-only register,exec,...] [-keep] [-out bench-results.json]
//
// What it measures:
//
//  1. register: wall time per call, forked and reaped the way consul-template
//     runs a plugin, against a no-op Go binary started the same way.
//  2. exec: return time while another node (the benchmark) holds the lock.
//  3. lock hand-off: from one holder's command exit to the next waiting
//     holder's command start, ct-supervise run vs consul lock, and its
//     ratio to the floor measured on the same agent: a blocking wake-up,
//     a KV write and a fork of /bin/true; and (3b) the gate hand-off: from
//     a -wait-healthy holder's check passing to the next waiting holder's
//     command start.
//  4. rolling overhead: 20 contenders with a 100 ms action, n=1 and n=5.
//  5. scale: up to 200 contenders on one n=10 semaphore; the agent's HTTP
//     request counters per completed action, and how they grow; the slots
//     kept busy on average; 1,000 contenders more in the full run
//     (-scale-huge K changes that, 0 drops it).
//  6. memory: peak RSS of register, exec, the worker and a lock holder.
//
// Every process it starts runs in a process group of its own and is stopped
// at the end, on error and on Ctrl-C, as is the agent.
package main

import (
	"context"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// config is the command line.
type config struct {
	ctSupervise string
	consul      string
	out         string
	quick       bool
	only        map[string]bool
	keep        bool
	scaleHuge   int // -scale-huge: contenders of the extra stress point (0: none; -1: the default)
}

// params are the sample sizes of one run.
type params struct {
	registerN     int           // register and no-op calls each
	execWarmN     int           // exec calls with the worker already waiting
	execColdN     int           // exec calls that start a worker
	handoffK      []int         // waiting contenders per hand-off round
	handoffRounds map[int]int   // rounds per K and tool
	handoffSleep  time.Duration // how long each holder's command runs
	rollingK      int           // contenders in the rolling test
	rollingLimits []int         // the -n values of the rolling test
	rollingSleep  time.Duration // the action's duration
	rollingReps   int           // repetitions per limit and tool
	scaleK        []int         // contender counts of the scale test
	scaleLimit    int           // the scale test's -n
	scaleSleep    time.Duration // the action's duration in the scale test
	scaleConsulK  int           // the largest K also run with consul lock (0: none)
	scaleHugeK    int           // contenders of the extra scale point, ct-supervise only (0: none)
}

func fullParams() params {
	return params{
		registerN:     1000,
		execWarmN:     300,
		execColdN:     30,
		handoffK:      []int{2, 10, 50},
		handoffRounds: map[int]int{2: 50, 10: 10, 50: 3},
		handoffSleep:  50 * time.Millisecond,
		rollingK:      20,
		rollingLimits: []int{1, 5},
		rollingSleep:  100 * time.Millisecond,
		rollingReps:   5,
		scaleK:        []int{50, 100, 200},
		scaleLimit:    10,
		scaleSleep:    50 * time.Millisecond,
		scaleConsulK:  200,
		scaleHugeK:    defaultScaleHuge,
	}
}

// defaultScaleHuge is the full run's stress point: 1,000 contenders on one
// semaphore, where a cost that grows with the square of the queue shows.
const defaultScaleHuge = 1000

func quickParams() params {
	p := fullParams()
	p.registerN = 150
	p.execWarmN = 60
	p.execColdN = 10
	p.handoffRounds = map[int]int{2: 12, 10: 2, 50: 1}
	p.rollingReps = 1
	p.scaleK = []int{25, 50, 100}
	p.scaleConsulK = 100
	p.scaleHugeK = 0
	return p
}

var allScenarios = []string{"register", "exec", "handoff", "gate", "rolling", "scale", "memory"}

func main() {
	os.Exit(realMain())
}

func realMain() int {
	var cfg config
	var only string
	flag.StringVar(&cfg.ctSupervise, "ct-supervise", "bin/ct-supervise", "the ct-supervise binary to measure")
	flag.StringVar(&cfg.consul, "consul", "", "the consul binary (default $CONSUL_BIN, then consul on PATH)")
	flag.StringVar(&cfg.out, "out", "bench-results.json", "where to write the results as JSON")
	flag.BoolVar(&cfg.quick, "quick", false, "fewer repetitions and at most 100 contenders (about a minute)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run: "+strings.Join(allScenarios, ","))
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (ledgers, logs) for inspection")
	flag.IntVar(&cfg.scaleHuge, "scale-huge", -1, fmt.Sprintf("also run this many contenders on one n=10 semaphore, ct-supervise only; 0 for none (default %d in the full run, none with -quick)", defaultScaleHuge))
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	if only != "" {
		cfg.only = map[string]bool{}
		for _, s := range strings.Split(only, ",") {
			s = strings.TrimSpace(s)
			if !contains(allScenarios, s) {
				fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ","))
				return 2
			}
			cfg.only[s] = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	b, err := newBench(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	defer b.close()

	res, err := b.runAll()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted; stopping everything")
			return 130
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	table := res.markdown()
	fmt.Print(table)
	if err := res.writeJSON(cfg.out); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: results written to %s\n", cfg.out)
	return 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// bench is one benchmark run: the agent, the helper binaries and every
// process started.
type bench struct {
	ctx    context.Context
	cfg    config
	p      params
	tmp    string
	agent  *devconsul.Agent
	client *api.Client
	ownReq atomic.Int64 // requests made by the benchmark's own client
	// agentPID is the agent's process, for its CPU time; 0 if not found.
	agentPID int
	procs    *procs
	log      io.Writer

	cts, consul, noop, stamp string
}

// newBench builds the helpers and starts the agent.
func newBench(ctx context.Context, cfg config) (b *bench, err error) {
	b = &bench{ctx: ctx, cfg: cfg, procs: newProcs(), log: os.Stderr}
	b.p = fullParams()
	if cfg.quick {
		b.p = quickParams()
	}
	if cfg.scaleHuge >= 0 {
		b.p.scaleHugeK = cfg.scaleHuge
	}
	defer func() {
		if err != nil {
			b.close()
		}
	}()

	if b.cts, err = filepath.Abs(cfg.ctSupervise); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(b.cts); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("ct-supervise binary %q not found: run `make build` (or `make bench`)", cfg.ctSupervise)
	}
	if b.consul, err = devconsul.FindBinary(cfg.consul); err != nil {
		return nil, err
	}
	if b.consul, err = filepath.Abs(b.consul); err != nil {
		return nil, err
	}
	// 0700, as the ct-supervise state directories under it must be.
	if b.tmp, err = os.MkdirTemp("", "ct-supervise-bench-"); err != nil {
		return nil, err
	}

	b.logf("building the no-op and stamp helpers")
	if b.noop, err = b.goBuild("noop"); err != nil {
		return nil, err
	}
	if b.stamp, err = b.goBuild("stamp"); err != nil {
		return nil, err
	}

	b.logf("starting a consul dev agent (%s)", b.consul)
	if b.agent, err = startAgent(b.tmp, b.consul); err != nil {
		return nil, err
	}
	if b.client, err = newClient(b.agent, &b.ownReq); err != nil {
		return nil, err
	}
	b.agentPID = b.agent.PID()
	return b, nil
}

// goBuild builds one of the helper commands next to this one.
func (b *bench) goBuild(name string) (string, error) {
	out := filepath.Join(b.tmp, name)
	cmd := exec.CommandContext(b.ctx, "go", "build", "-o", out, "ct-supervise/internal/bench/"+name)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building the %s helper: %w", name, err)
	}
	return out, nil
}

// goBuildStatic builds ct-supervise from the module's source with cgo off.
func (b *bench) goBuildStatic() (string, error) {
	out := filepath.Join(b.tmp, "ct-supervise-static")
	cmd := exec.CommandContext(b.ctx, "go", "build", "-o", out, "ct-supervise")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building ct-supervise with CGO_ENABLED=0: %w", err)
	}
	return out, nil
}

// isDynamic reports whether an ELF executable asks for a dynamic loader.
func isDynamic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// close stops every process, then the agent, and removes the temporary
// directory. Safe on a partly built bench.
func (b *bench) close() {
	b.procs.stopAll(3 * time.Second)
	if b.agent != nil {
		b.agent.Stop()
		b.agent = nil
	}
	if b.tmp != "" {
		if b.cfg.keep {
			fmt.Fprintf(b.log, "bench: kept %s\n", b.tmp)
		} else {
			_ = os.RemoveAll(b.tmp)
		}
		b.tmp = ""
	}
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", a...)
}

// env is our environment pointed at the agent, plus extra.
func (b *bench) env(extra ...string) []string {
	env := make([]string, 0, len(os.Environ())+len(extra)+1)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONSUL_HTTP_ADDR=") || strings.HasPrefix(kv, "CT_SUPERVISE_STATE_DIR=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "CONSUL_HTTP_ADDR="+b.agent.Addr())
	return append(env, extra...)
}

func (b *bench) want(scenario string) bool {
	return b.cfg.only == nil || b.cfg.only[scenario]
}

// runAll runs the selected scenarios in order.
func (b *bench) runAll() (res *Results, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	res = newResults(b)
	steps := []struct {
		name string
		fn   func(*Results) error
	}{
		{"register", b.benchRegister},
		{"exec", b.benchExec},
		{"handoff", b.benchHandoff},
		{"gate", b.benchGate},
		{"rolling", b.benchRolling},
		{"scale", b.benchScale},
		{"memory", b.benchMemory},
	}
	start := time.Now()
	for _, s := range steps {
		if !b.want(s.name) {
			continue
		}
		t0 := time.Now()
		if err := s.fn(res); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if err := b.ctx.Err(); err != nil {
			return nil, err
		}
		b.logf("%s done in %s", s.name, time.Since(t0).Round(100*time.Millisecond))
	}
	res.Meta.TotalSeconds = time.Since(start).Seconds()
	res.Meta.LoadAvgEnd = loadAvg()
	return res, nil
}

// loadAvg is the 1-minute load average, as a hint of how busy the machine
// was (other work on a 2-core machine shows in every figure).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// sleepCtx sleeps unless ctx is cancelled first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
