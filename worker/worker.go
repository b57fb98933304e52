// Package worker drains the queue of a state directory: one action at a
// time, in the order they were queued, each under its own Consul lock or
// semaphore. It runs detached from consul-template (started by `exec`) or in
// the foreground (systemd), one instance per state directory.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
)

// DefaultPollInterval is how often an idle or waiting worker re-reads the
// queue for new requests. Reading is one small file under a shared lock.
const DefaultPollInterval = 200 * time.Millisecond

// Options configures a worker. Every field says what its zero value does.
type Options struct {
	// Store is the state directory to drain. Required.
	Store *state.Store

	// Runner runs each action under its lock. Required.
	Runner *lockexec.Runner

	// Logger receives the worker's log; each action logs through a
	// sub-logger named after it. Nil discards.
	Logger hclog.Logger

	// Output receives the actions' stdout and stderr. Nil discards.
	Output io.Writer

	// KeepRunning keeps the worker alive on an empty queue, for a worker
	// run as a service. False exits as soon as the queue is empty.
	KeepRunning bool

	// WaitForLock waits for another worker of the directory to exit
	// instead of returning ErrAlreadyRunning (for a service, which must
	// not fail because exec started a detached worker first).
	WaitForLock bool

	// PollInterval is how often the queue is re-read while idle or waiting
	// out a backoff. Zero means DefaultPollInterval.
	PollInterval time.Duration

	// Backoff is the retry policy for failed tries. Zero fields mean the
	// plugin defaults.
	Backoff state.Backoff
}

// Run drains the queue until it is empty (or, with KeepRunning, until ctx
// is cancelled). Cancelling ctx stops a running action (its command is
// terminated and the lock released) and leaves it queued for the next
// worker. Returns ErrAlreadyRunning if another worker holds the directory.
func Run(ctx context.Context, opts Options) error {
	if opts.Store == nil || opts.Runner == nil {
		return errors.New("worker: Store and Runner are required")
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = DefaultPollInterval
	}

	lock, err := acquireInstanceLock(ctx, opts.Store, opts.WaitForLock)
	if errors.Is(err, context.Canceled) {
		return nil // stopped while waiting for the other worker
	}
	if err != nil {
		return err
	}
	defer lock.release()
	log.Debug("worker started", "state_dir", opts.Store.Dir())

	err = opts.Store.Update(func(st *state.State) error {
		for _, name := range st.Interrupted() {
			log.Warn("the previous worker stopped during this action; running it again", "action", name)
			st.Abandon(name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recovering the queue: %w", err)
	}

	for {
		if ctx.Err() != nil {
			log.Info("stopping; queued actions stay queued")
			return nil
		}
		var (
			name string
			decl plugin.Declaration
			seq  uint64
			wait time.Duration
			done bool
		)
		err := opts.Store.Update(func(st *state.State) error {
			n, w, ok := st.Next(time.Now())
			if !ok {
				wait = w
				if st.QueueLen() == 0 && !opts.KeepRunning {
					// Let go of the instance lock while still holding the
					// state lock: an exec that queues after this sees no
					// worker and starts one, an exec that queued before
					// was seen here. No request can fall in between.
					lock.release()
					done = true
				}
				return nil
			}
			var err error
			decl, seq, err = st.Begin(n)
			name = n
			return err
		})
		if err != nil {
			return fmt.Errorf("reading the queue: %w", err)
		}
		if done {
			log.Debug("queue empty; worker exiting")
			return nil
		}
		if name == "" {
			if wait <= 0 || wait > poll {
				wait = poll
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			continue
		}
		if err := runOne(ctx, opts, log.Named(name), name, decl, seq); err != nil {
			return err
		}
	}
}

// runOne runs one action and records its outcome.
func runOne(ctx context.Context, opts Options, log hclog.Logger, name string, decl plugin.Declaration, seq uint64) error {
	lopts := decl.LockOptions()
	lopts.Stdout, lopts.Stderr = opts.Output, opts.Output
	lopts.Logger = log
	lopts.OnAcquired = func() {
		err := opts.Store.Update(func(st *state.State) error {
			st.Acquired(name)
			return nil
		})
		if err != nil {
			// Only status's view suffers; the run goes on.
			log.Warn("could not record that the lock is held", "error", err)
		}
	}
	log.Info("waiting for the lock", "prefix", decl.Prefix, "n", decl.Limit, "seq", seq)

	started := time.Now()
	res, err := opts.Runner.Run(ctx, lopts)
	finished := time.Now()

	// Stopping (a service manager may also signal the command itself, so
	// it can end before we notice): unless the run succeeded, it stays
	// queued for the next worker instead of counting as a failed try.
	if ctx.Err() != nil && (err != nil || res.ExitCode != 0) {
		log.Info("worker stopping; the action stays queued and runs again on the next start")
		return opts.Store.Update(func(st *state.State) error {
			st.Abandon(name)
			return nil
		})
	}

	out := state.Outcome{
		OK:       err == nil && res.ExitCode == 0,
		ExitCode: lockexec.ExitStatus(res, err),
		// Neither a Consul outage nor a -n that the fleet is still
		// changing over to is the action's fault: retry, never give up.
		Transient: errors.Is(err, lockexec.ErrConsulUnreachable) || errors.Is(err, lockexec.ErrLimitMismatch),
		Started:   started,
		Finished:  finished,
	}
	switch {
	case err != nil:
		out.Error = err.Error()
	case res.ExitCode != 0:
		out.Error = fmt.Sprintf("command exited with status %d", res.ExitCode)
	}

	var attempts int
	var next time.Time
	var failed bool
	uerr := opts.Store.Update(func(st *state.State) error {
		st.Finish(name, out, opts.Backoff)
		if a := st.Actions[name]; a != nil {
			attempts, next = a.Attempts, a.NextAttempt
			failed = a.Last != nil && a.Last.Failed
		}
		return nil
	})
	if uerr != nil {
		// The run stays marked running on disk, so the next worker runs it
		// again: a repeat is better than a lost reload.
		return fmt.Errorf("recording the outcome of %q: %w", name, uerr)
	}

	switch {
	case out.OK:
		log.Info("action finished", "waited", res.Waited.Round(time.Millisecond), "ran", res.Ran.Round(time.Millisecond))
	case failed:
		log.Error("action failed; giving up until the next exec", "error", out.Error, "exit_code", out.ExitCode, "attempts", decl.MaxAttempts)
	case !next.IsZero():
		log.Warn("action failed; will retry", "error", out.Error, "exit_code", out.ExitCode,
			"attempt", attempts, "retry_in", time.Until(next).Round(time.Second))
	default:
		log.Warn("action failed; a newer request runs it again now", "error", out.Error, "exit_code", out.ExitCode)
	}
	return nil
}
