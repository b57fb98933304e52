// Package action runs one action the whole way, on a node: the pre-flight
// check, the splay, the waits for the fleet (pause, halt, blockers), the lock,
// maintenance and drain, the command, the health gate and the hold, then
// maintenance off and the release. The worker runs it for queued actions and
// `ct-supervise run` for one action now.
//
// Everything from maintenance on to maintenance off runs under the lease's
// fenced context (lockexec.Lease.Context): if the lock is lost, or can no
// longer be confirmed in time, each step stops before anyone else could hold
// the lock. That is what keeps "never more than N nodes out of service"
// true for every step, not only for the command.
package action

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/fleet"
	"ct-supervise/health"
	"ct-supervise/internal/ctxsleep"
	"ct-supervise/lockexec"
)

// Phases an action goes through, as `status` and the rollout view show
// them.
const (
	PhaseChecking = "checking"
	PhaseSplay    = "splay"
	PhaseHalted   = "halted"
	PhasePaused   = "paused"
	PhaseBlocked  = "blocked"
	PhaseWaiting  = "waiting"
	PhaseDraining = "draining"
	PhaseRunning  = "running"
	PhaseGating   = "gating"
	PhaseHolding  = "holding"
)

// Failure policies: what a failure on this node does to the rest of the
// fleet.
const (
	OnFailureHalt     = "halt"
	OnFailureContinue = "continue"
)

// DefaultOnFailure is the policy when Options.OnFailure is empty: a
// failing node stops the rollout, so that a bad config does not walk the
// whole fleet into failure.
const DefaultOnFailure = OnFailureHalt

// Sentinel errors, mapped to exit codes with the others in lockexec.
var (
	// ErrCheckFailed means the pre-flight check exited non-zero: nothing
	// was locked and the command did not run.
	ErrCheckFailed = errors.New("pre-flight check failed")

	// ErrUnhealthy means the command succeeded but the service did not
	// become healthy in time. It wraps health.ErrUnhealthy.
	ErrUnhealthy = health.ErrUnhealthy
)

// Options describes one action. Every field says what its zero value does.
type Options struct {
	// Lock is the lock and the command: prefix, limit, session settings,
	// Try, the command and its streams, signals, KillGrace, hooks. Its
	// OnAcquired is called once the lock is held, just before the command
	// starts (after maintenance and drain). With a Fleet, the action adds
	// its own BeforeTake (after any given here): see switchesPrefetch.
	Lock lockexec.Options

	// Check is run before contending for the lock (e.g. `nginx -t`); a
	// non-zero exit fails the action with ErrCheckFailed before any
	// session exists. Nil runs no check. CheckShell runs it through
	// /bin/sh -c, as Lock.Shell does the command.
	Check      []string
	CheckShell bool

	// CheckTimeout bounds the check. Zero means DefaultCheckTimeout.
	CheckTimeout time.Duration

	// Splay is the upper bound of a random delay before contending. Zero
	// contends at once.
	Splay time.Duration

	// Node is this node's name in the fleet's records and in health
	// queries. Required when WaitHealthy, Maint, OnFailure=halt or
	// UnlessCritical apply.
	Node string

	// WaitHealthy are services whose instances on Node must pass their
	// checks, with fresh results, before the lock is released. Nil
	// releases as soon as the command exits 0.
	WaitHealthy []string

	// HealthTimeout bounds the gate. Zero means health.DefaultTimeout.
	// HealthSettle overrides each check's settle time; zero uses each
	// check's interval.
	HealthTimeout time.Duration
	HealthSettle  time.Duration

	// Maint is a service put into maintenance mode on this node for the
	// action; empty puts none. On success maintenance is lifted before the
	// release; on failure it stays, so that traffic stays away.
	Maint string

	// Drain is waited after maintenance on, before the command, so that
	// consumers drop this node. Zero waits none.
	Drain time.Duration

	// Hold keeps the lock this long after success. Zero releases at once.
	Hold time.Duration

	// OnFailure is OnFailureHalt or OnFailureContinue; empty means
	// DefaultOnFailure. Halt needs Node.
	OnFailure string

	// UnlessCritical are services that must have no critical instance on
	// another node before this one starts. Nil checks none.
	UnlessCritical []string

	// Fleet is the action's fleet records (halt, pause). Nil skips the
	// fleet: no pause, no halt.
	Fleet *fleet.Fleet

	// OnPhase, if not nil, is told each phase as it begins, with a
	// one-line detail (what a wait waits on). It must return quickly.
	OnPhase func(phase, detail string)

	// Logger receives the pipeline's log lines. Nil discards them.
	Logger hclog.Logger
}

// DefaultCheckTimeout bounds a pre-flight check when Options.CheckTimeout
// is zero: a check that hangs must not hold up the queue for ever.
const DefaultCheckTimeout = 2 * time.Minute

// Result is what happened: the lock run's result, plus whether the service
// was left in maintenance.
type Result struct {
	lockexec.Result

	// CheckOutput is the check's combined output (truncated), when a
	// check ran.
	CheckOutput string

	// MaintLeft is true when the action failed with Maint on: the service
	// stays in maintenance until an operator or a later success lifts it.
	MaintLeft bool
}

// Pipeline runs actions against one Consul client.
type Pipeline struct {
	client *api.Client
	runner *lockexec.Runner
}

// New returns a pipeline talking to Consul through client.
func New(client *api.Client) *Pipeline {
	return &Pipeline{client: client, runner: lockexec.New(client)}
}

// Run runs the action once. A command that ran to completion with the
// health gate passed is a success whatever its exit status, as in
// lockexec.Runner.Run: err is nil and Result.ExitCode has the status; a
// non-zero status skips the gate and the hold.
func (p *Pipeline) Run(ctx context.Context, opts Options) (res Result, err error) {
	res.ExitCode = -1
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return res, err
	}
	r := &runner{p: p, opts: opts, log: opts.Logger}
	if err := r.check(ctx, &res); err != nil {
		r.recordFailure(res, err)
		return res, err
	}
	if err := r.splay(ctx); err != nil {
		return res, err
	}
	var deadline time.Time
	if opts.Lock.Try > 0 {
		// -try bounds the whole wait to start: a halt or a pause that
		// outlasts it fails the action as a lock wait would.
		deadline = time.Now().Add(opts.Lock.Try)
	}
	prefetch := newSwitchesPrefetch(ctx, opts.Fleet)
	if prefetch != nil {
		defer prefetch.stop()
		r.opts.Lock.BeforeTake = prefetch.hook(r.opts.Lock.BeforeTake)
	}
	for {
		if err := r.waitForFleetUntil(ctx, deadline); err != nil {
			return res, err
		}
		if !deadline.IsZero() {
			r.opts.Lock.Try = max(time.Until(deadline), time.Millisecond)
		}
		lease, err := r.acquire(ctx, &res)
		if err != nil {
			return res, err
		}
		if why := r.blockedOnceHeld(ctx, prefetch); why != "" {
			// Halted or paused while we waited for the lock: the node
			// before us failed. Give the lock back and wait again.
			r.log.Info("the rollout stopped while we waited for the lock; waiting again", "why", why)
			if err := lease.Release(); err != nil {
				return res, err
			}
			continue
		}
		return r.underLease(ctx, lease, res)
	}
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.OnFailure == "" {
		o.OnFailure = DefaultOnFailure
	}
	if o.CheckTimeout == 0 {
		o.CheckTimeout = DefaultCheckTimeout
	}
	return o
}

func (o Options) validate() error {
	invalid := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", lockexec.ErrInvalidOptions, fmt.Sprintf(format, a...))
	}
	switch {
	case o.OnFailure != OnFailureHalt && o.OnFailure != OnFailureContinue:
		return invalid("-on-failure must be %q or %q, got %q", OnFailureHalt, OnFailureContinue, o.OnFailure)
	case o.Node == "" && (len(o.WaitHealthy) > 0 || o.Maint != ""):
		return invalid("the node name is required for -wait-healthy and -maint")
	case o.Splay < 0 || o.Drain < 0 || o.Hold < 0 || o.HealthTimeout < 0 || o.HealthSettle < 0 || o.CheckTimeout < 0:
		return invalid("durations must not be negative")
	}
	return nil
}

// runner is one Run's state.
type runner struct {
	p    *Pipeline
	opts Options
	log  hclog.Logger

	// lastWait is what the last wait phase waited on, for the error of a
	// wait that -try cut short.
	lastWait string
}

// errTryExpired is the cause of a fleet wait cut short by -try.
var errTryExpired = errors.New("-try expired")

// waitForFleetUntil is waitForFleet bounded by deadline (zero: none).
func (r *runner) waitForFleetUntil(ctx context.Context, deadline time.Time) error {
	if deadline.IsZero() {
		return r.waitForFleet(ctx)
	}
	wctx, cancel := context.WithDeadlineCause(ctx, deadline, errTryExpired)
	defer cancel()
	err := r.waitForFleet(wctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), errTryExpired) {
		return fmt.Errorf("%w: %s", lockexec.ErrNotAcquired, r.lastWait)
	}
	return err
}

func (r *runner) phase(phase, detail string) {
	switch phase {
	case PhaseHalted, PhasePaused, PhaseBlocked:
		r.lastWait = detail
	}
	r.log.Debug("phase", "phase", phase, "detail", detail)
	if r.opts.OnPhase != nil {
		r.opts.OnPhase(phase, detail)
	}
}

// splay sleeps a random part of Splay.
func (r *runner) splay(ctx context.Context) error {
	if r.opts.Splay <= 0 {
		return nil
	}
	d := rand.N(r.opts.Splay)
	r.phase(PhaseSplay, fmt.Sprintf("random delay of %s before contending", d.Round(time.Millisecond)))
	return sleep(ctx, d)
}

// acquire waits for the lock.
func (r *runner) acquire(ctx context.Context, res *Result) (*lockexec.Lease, error) {
	r.phase(PhaseWaiting, "for the lock on "+r.opts.Lock.Prefix)
	start := time.Now()
	lease, err := r.p.runner.Acquire(ctx, r.opts.Lock)
	res.Waited = time.Since(start)
	if lease != nil {
		res.Session = lease.Session()
	}
	return lease, err
}

// sleep waits for d unless ctx ends first, which it reports as
// lockexec.ErrInterrupted with the cause.
func sleep(ctx context.Context, d time.Duration) error {
	if ctxsleep.Sleep(ctx, d) != nil {
		return fmt.Errorf("%w: %v", lockexec.ErrInterrupted, context.Cause(ctx))
	}
	return nil
}

// NodeEnv is the environment variable that names this node when -node is
// not given, for hosts that share one Consul agent.
const NodeEnv = "CT_SUPERVISE_NODE"

// ResolveNode returns this node's name: override if not empty (-node, or
// $CT_SUPERVISE_NODE read by the caller), else the local agent's node name.
// When the agent cannot tell it (a token without agent:read) and the
// action does not query health (see NeedsAgentNode), the host name names
// the node in the fleet's records instead: a lock-only action must not
// need more ACLs than before.
func ResolveNode(ctx context.Context, client *api.Client, override string, needAgent bool) (string, error) {
	if override = strings.TrimSpace(override); override != "" {
		return override, nil
	}
	name, err := health.LocalNode(ctx, client)
	if err != nil && !needAgent {
		if host, herr := os.Hostname(); herr == nil && host != "" {
			return host, nil
		}
	}
	return name, err
}

// NeedsAgentNode reports whether the action queries this node's health
// or services, so that its node name must be Consul's.
func (o Options) NeedsAgentNode() bool {
	return len(o.WaitHealthy) > 0 || o.Maint != "" || len(o.UnlessCritical) > 0
}
