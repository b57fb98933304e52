// Package worker drains the queue of a state directory. Each action runs on
// a track of its own, under its own Consul lock or semaphore: actions run
// concurrently (up to MaxParallel), one action never runs twice at once on
// this node, and a lock held elsewhere holds up only its own action. The
// worker runs detached from consul-template (started by `exec` or
// `register`) or in the foreground (systemd), one instance per state
// directory.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
	"ct-supervise/state"
)

// Defaults used when the matching Options field is zero.
const (
	// DefaultPollInterval is how often an idle or waiting worker re-reads
	// the queue for new requests. Reading is one small file under a lock.
	DefaultPollInterval = 200 * time.Millisecond

	// DefaultMaxParallel is how many actions may run (or wait for their
	// locks) at once; the others stay queued until a track frees up.
	DefaultMaxParallel = 8

	// DefaultStopGrace is how long a command that is running when the
	// worker is told to stop may go on to finish by itself before it is
	// terminated (SIGTERM, then SIGKILL after the action's kill grace).
	DefaultStopGrace = 10 * time.Second

	// DefaultOutagePoll is how often the worker asks Consul whether it is
	// back while actions wait out a backoff after an outage.
	DefaultOutagePoll = 1500 * time.Millisecond
)

// pingTimeout bounds one "is Consul back?" request.
const pingTimeout = time.Second

// Runner is what the worker needs from Consul. *lockexec.Runner does the
// first two; ConsulRunner adds Ping and the connection settings.
type Runner interface {
	// Run runs one command under its lock, as lockexec.Runner.Run does.
	Run(ctx context.Context, opts lockexec.Options) (lockexec.Result, error)

	// Reclaim gives back the lock or slot of a run whose worker died, and
	// destroys its session; the caller has made sure its command is gone.
	Reclaim(ctx context.Context, prefix string, limit int, session string) error

	// Ping makes one cheap request to Consul; nil means Consul answers.
	Ping(ctx context.Context) error
}

// Options configures a worker. Every field says what its zero value does.
type Options struct {
	// Store is the state directory to drain. Required.
	Store *state.Store

	// Runner runs each action under its lock. Required.
	Runner Runner

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

	// MaxParallel caps the actions under way at once. Zero means
	// DefaultMaxParallel.
	MaxParallel int

	// StopGrace is how long a running command may take to finish by itself
	// once ctx is cancelled. Zero means DefaultStopGrace; negative stops
	// it at once.
	StopGrace time.Duration

	// OutagePoll is how often Consul is asked whether it is back while an
	// action waits after an outage. Zero means DefaultOutagePoll.
	OutagePoll time.Duration

	// Backoff is the retry policy for failed tries. Zero fields mean the
	// state package's defaults.
	Backoff state.Backoff
}

// withDefaults fills in the zero fields that have defaults.
func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.MaxParallel <= 0 {
		o.MaxParallel = DefaultMaxParallel
	}
	switch {
	case o.StopGrace == 0:
		o.StopGrace = DefaultStopGrace
	case o.StopGrace < 0:
		o.StopGrace = 0
	}
	if o.OutagePoll <= 0 {
		o.OutagePoll = DefaultOutagePoll
	}
	return o
}

// Run drains the queue until it is empty (or, with KeepRunning, until ctx
// is cancelled). Cancelling ctx stops every track: one waiting for its lock
// stops at once, a running command gets StopGrace to finish and is then
// terminated; every lock is released, and what did not finish stays queued
// for the next worker. Returns ErrAlreadyRunning if another worker holds
// the directory.
func Run(ctx context.Context, opts Options) error {
	if opts.Store == nil || opts.Runner == nil {
		return errors.New("worker: Store and Runner are required")
	}
	opts = opts.withDefaults()
	lock, err := acquireInstanceLock(ctx, opts.Store, opts.WaitForLock)
	if errors.Is(err, context.Canceled) {
		return nil // stopped while waiting for the other worker
	}
	if err != nil {
		return err
	}
	defer lock.release()
	w := &worker{
		opts:   opts,
		log:    opts.Logger,
		lock:   lock,
		tracks: map[string]*track{},
		ended:  make(chan trackEnd),
	}
	w.log.Debug("worker started", "state_dir", opts.Store.Dir(), "max_parallel", opts.MaxParallel)
	if err := w.recoverInterrupted(ctx); err != nil {
		return fmt.Errorf("recovering the queue: %w", err)
	}
	return w.loop(ctx)
}

// worker is one Run: the scheduler loop and its tracks.
type worker struct {
	opts Options
	log  hclog.Logger
	lock *instanceLock

	// tracks are the actions under way, by name. Only the loop touches it.
	tracks map[string]*track
	// ended receives each track's end.
	ended chan trackEnd

	// lastPing is when Consul was last asked whether it is back.
	lastPing time.Time
}

// trackEnd is a finished track; err is set when its outcome could not be
// recorded.
type trackEnd struct {
	name string
	err  error
}

// loop starts the due actions on tracks of their own and waits for them,
// for new requests or for backoffs to pass.
func (w *worker) loop(ctx context.Context) error {
	for {
		if ctx.Err() != nil {
			return w.stop(nil)
		}
		retry := w.consulBack(ctx)
		wait, exit, err := w.schedule(retry)
		if err != nil {
			return w.stop(fmt.Errorf("reading the queue: %w", err))
		}
		if exit {
			w.log.Debug("queue empty; worker exiting")
			return nil
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case e := <-w.ended:
			delete(w.tracks, e.name)
			if e.err != nil {
				timer.Stop()
				return w.stop(e.err)
			}
		case <-timer.C:
		}
		timer.Stop()
	}
}

// schedule begins every due action that has no track yet, within
// MaxParallel, and says how long to sleep before looking again. On an
// empty queue with nothing under way (and no KeepRunning) it lets go of the
// instance lock while still holding the state lock: an exec that queues
// after this sees no worker and starts one, an exec that queued before was
// seen here. No request can fall in between.
func (w *worker) schedule(retryOutages bool) (wait time.Duration, exit bool, err error) {
	var begun []begunRun
	outage := false
	err = w.opts.Store.Update(func(st *state.State) error {
		now := time.Now()
		if retryOutages {
			if names := st.RetryOutages(); len(names) > 0 {
				w.log.Info("Consul answers again; retrying now", "actions", names)
			}
		}
		due, backoff := st.Due(now)
		wait = backoff
		for _, name := range due {
			if len(w.tracks)+len(begun) >= w.opts.MaxParallel {
				break
			}
			if _, busy := w.tracks[name]; busy {
				continue // finished, and its end not yet collected
			}
			decl, seq, err := st.Begin(name)
			if err != nil {
				return err
			}
			begun = append(begun, begunRun{name: name, decl: decl, seq: seq})
		}
		outage = st.WaitingOnOutage(now)
		if len(begun) == 0 && len(w.tracks) == 0 && st.QueueLen() == 0 && !w.opts.KeepRunning {
			w.lock.release()
			exit = true
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	for _, b := range begun {
		w.start(b)
	}
	if wait <= 0 || wait > w.opts.PollInterval {
		wait = w.opts.PollInterval
	}
	if outage {
		w.lastPingDue(&wait)
	} else {
		w.lastPing = time.Time{}
	}
	return wait, exit, nil
}

// lastPingDue shortens wait so that the loop is back when the next ping is
// due. The loop pings only while an action waits after an outage.
func (w *worker) lastPingDue(wait *time.Duration) {
	if w.lastPing.IsZero() {
		w.lastPing = time.Now()
	}
	if d := time.Until(w.lastPing.Add(w.opts.OutagePoll)); d < *wait {
		*wait = max(d, 0)
	}
}

// consulBack asks Consul whether it answers, at most every OutagePoll and
// only while an action waits out a backoff after an outage (the last
// schedule saw one and set lastPing). It reports true once Consul answers.
func (w *worker) consulBack(ctx context.Context) bool {
	if w.lastPing.IsZero() || time.Since(w.lastPing) < w.opts.OutagePoll {
		return false
	}
	w.lastPing = time.Now()
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := w.opts.Runner.Ping(pctx); err != nil {
		w.log.Debug("Consul still unreachable", "error", err)
		return false
	}
	w.lastPing = time.Time{}
	return true
}

// stop stops every track (see track.stop), waits for them all and returns
// cause. The actions they leave unfinished stay queued.
func (w *worker) stop(cause error) error {
	if len(w.tracks) > 0 {
		w.log.Info("stopping; running commands get a grace period, unfinished actions stay queued",
			"tracks", len(w.tracks), "grace", w.opts.StopGrace)
	}
	for _, t := range w.tracks {
		t.stop(w.opts.StopGrace)
	}
	for len(w.tracks) > 0 {
		e := <-w.ended
		delete(w.tracks, e.name)
		if e.err != nil && cause == nil {
			cause = e.err
		}
	}
	if cause == nil {
		w.log.Info("worker stopped; queued actions stay queued")
	}
	return cause
}
