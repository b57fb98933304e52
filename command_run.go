package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/action"
	"ct-supervise/exitcode"
	"ct-supervise/fleet"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
)

const runUsage = `Usage: ct-supervise [run] [flags] COMMAND

Runs COMMAND while holding a Consul lock (-n 1) or a slot of a semaphore
(-n > 1) at the KV prefix, then releases it and destroys the session. The
same command on every node meets on the same prefix.

With -check, the check runs first and a failure stops everything before
any lock is taken. With -wait-healthy, the lock is kept after COMMAND until
this node's instances of the service pass their Consul checks with fresh
results; with -maint the service is in maintenance mode meanwhile. A halt
set by a failing node, or a pause ('ct-supervise pause'), stops the start;
-try bounds that wait too.

Exit status: COMMAND's own, or 64 bad usage, 65 -check failed,
69 Consul unreachable, 70 internal error, 75 not started within -try,
76 lock lost, 77 permission denied, 78 -n differs from other holders,
79 not healthy within -health-timeout, 124 -command-timeout exceeded,
126 command not executable, 127 command not found, 130 interrupted.

Several arguments are an argument vector: each reaches the program as
given (with the shell, each is quoted). Write shell syntax as one argument:
ct-supervise run -n 2 'nginx -t && nginx -s reload'.
-timeout is the lock wait, an alias of -try, as in consul lock.

Flags:
`

// runCommand is `ct-supervise run`: consul lock, made safe.
func (c *CLI) runCommand(args []string) int {
	const cmd = "run"
	fs := newFlagSet(cmd)
	d := plugin.DefaultDeclaration()
	d.BindFlags(fs)
	var cf consulFlags
	cf.bind(fs)
	node := nodeFlag(fs)
	passStdin := fs.Bool("pass-stdin", false, "pass our standard input to the command (otherwise it gets none)")
	verbose := fs.Bool("verbose", false, "debug logging on standard error")
	if code, done := c.parseFlags(fs, cmd, runUsage, args); done {
		return code
	}
	if err := plugin.CheckFlagUse(fs, args); err != nil {
		return c.usageError(cmd, err)
	}
	d.Command = fs.Args()
	if err := d.Finish(); err != nil {
		return c.usageError(cmd, err)
	}
	client, err := cf.client()
	if err != nil {
		// Settings that make no client (a CA file that cannot be read) are
		// configuration, not usage: no -h hint would help.
		return c.errorf(cmd, exitcode.Config, "%v", err)
	}
	log := newLogger(cmd, *verbose, c.stderr)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := d.ActionOptions()
	name, err := action.ResolveNode(ctx, client, *node, opts.NeedsAgentNode())
	if err != nil {
		err = lockexec.ClassifyConsulError(err)
		return c.errorf(cmd, exitcode.Of(lockexec.Result{}, err), "%v (or give -node NAME)", err)
	}

	opts.Node = name
	opts.Fleet = fleet.New(client, d.Prefix)
	opts.Logger = log
	opts.Lock.Stdout, opts.Lock.Stderr = c.stdout, c.stderr
	if *passStdin {
		opts.Lock.Stdin = c.stdin
	}
	opts.Lock.Logger = log
	relay := newSignalRelay(cancel)
	defer relay.stop()
	opts.Lock.Signals = relay.forward
	opts.OnPhase = func(phase, detail string) {
		relay.phase.Store(phase)
		logPhase(log, phase, detail)
	}

	res, err := action.New(client).Run(ctx, opts)
	if err != nil && relay.stopped.Load() && !errors.Is(err, lockexec.ErrInterrupted) {
		err = fmt.Errorf("%w: %v", lockexec.ErrInterrupted, err)
	}
	code := exitcode.Of(res.Result, err)
	var msg []string
	if err != nil {
		msg = append(msg, err.Error())
	} else if res.ExitCode != 0 && res.MaintLeft {
		msg = append(msg, fmt.Sprintf("command exited with status %d", res.ExitCode))
	}
	if res.MaintLeft {
		msg = append(msg, fmt.Sprintf("%q stays in maintenance on %s so that traffic stays away: 'consul maint -disable -service ID' takes it out", d.Maint, name))
	}
	if len(msg) > 0 {
		c.errorf(cmd, code, "%s", strings.Join(msg, "; "))
	}
	return code
}

// nodeFlag binds -node, whose default is $CT_SUPERVISE_NODE.
func nodeFlag(fs *flag.FlagSet) *string {
	return fs.String("node", os.Getenv(action.NodeEnv),
		"this node's name in health queries and fleet records (default $"+action.NodeEnv+", then the local Consul agent's node name)")
}

// logPhase tells the operator of `run` what a long step waits on.
func logPhase(log hclog.Logger, phase, detail string) {
	switch phase {
	case action.PhaseHalted, action.PhasePaused, action.PhaseBlocked:
		log.Warn("not starting yet", "phase", phase, "why", detail)
	case action.PhaseChecking, action.PhaseDraining, action.PhaseGating, action.PhaseHolding:
		log.Info(phase, "detail", detail)
	default:
		log.Debug(phase, "detail", detail)
	}
}

// signalRelay hands our signals to the right step: while the lock is
// awaited or the command runs, lockexec gets them all (it forwards them to
// the command, and SIGINT or SIGTERM stop it); during the other steps (the
// check, the fleet waits, maintenance, the gate, the hold), SIGINT or
// SIGTERM cancel the run.
type signalRelay struct {
	raw     chan os.Signal
	forward chan os.Signal
	phase   atomic.Value // string: the current phase
	stopped atomic.Bool  // a signal cancelled the run
	done    chan struct{}
}

func newSignalRelay(cancel context.CancelFunc) *signalRelay {
	r := &signalRelay{raw: make(chan os.Signal, 8), forward: make(chan os.Signal, 8), done: make(chan struct{})}
	r.phase.Store("")
	signal.Notify(r.raw, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for {
			select {
			case <-r.done:
				return
			case sig := <-r.raw:
				switch phase := r.phase.Load().(string); {
				case phase == action.PhaseWaiting || phase == action.PhaseRunning:
					select {
					case r.forward <- sig:
					default:
					}
				case sig == syscall.SIGINT || sig == syscall.SIGTERM:
					r.stopped.Store(true)
					cancel()
				}
			}
		}
	}()
	return r
}

func (r *signalRelay) stop() {
	signal.Stop(r.raw)
	close(r.done)
}
