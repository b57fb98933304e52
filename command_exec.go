package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"ct-supervise/state"
	"ct-supervise/worker"
)

const execUsage = `Usage: ct-supervise exec [flags] [NAME...]

Queues the named declared actions (none named: every action registered since
the last exec) for the background worker, starts the worker if none runs
for the state directory, and returns at once, whatever the lock contention.
Use it as the template's post-render command:

  command = "ct-supervise exec"

With -wait it instead waits for the queued actions to finish (retries
included) and exits with the status of the first one that failed.

consul-template exits when its command fails, so exec exits 0 unless it
could not record the request: a NAME that no template registered (yet) is a
warning, an error only with -strict or -wait.

Flags:
`

// execPollInterval is how often exec -wait re-reads the queue.
const execPollInterval = 100 * time.Millisecond

// execCommand is `ct-supervise exec`, consul-template's post-render command.
// Its runner blocks while we run, so all waiting is left to the worker.
func (c *CLI) execCommand(args []string) int {
	const cmd = "exec"
	fs := newFlagSet(cmd)
	wait := fs.Bool("wait", false, "wait for the queued actions to finish and exit with their status (for -once runs and scripts)")
	waitTimeout := fs.Duration("wait-timeout", 0, "with -wait, give up waiting after this long (0: no limit)")
	strict := fs.Bool("strict", false, "fail on a NAME that is not registered (with -wait too); otherwise warn and exit 0")
	stateDir := stateDirFlag(fs)
	verbose := fs.Bool("verbose", false, "debug logging on standard error (the worker logs at debug level too)")
	if code, done := c.parseFlags(fs, cmd, execUsage, args); done {
		return code
	}
	if *waitTimeout < 0 {
		return c.usageError(cmd, fmt.Errorf("-wait-timeout must not be negative, got %s", *waitTimeout))
	}
	log := newLogger(cmd, *verbose, c.stderr)
	store, err := openStore(*stateDir)
	if (errors.Is(err, state.ErrNoDefaultStateDir) || storageFault(err)) && !*wait {
		// consul-template logs this line; failing would stop it.
		return c.errorf(cmd, ExitOK, "%v; nothing queued", err)
	}
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	// consul-template gives its commands its Consul settings, and its
	// plugins not: record them for the workers, register's included.
	if _, err := worker.RecordConsulSettings(store, os.Environ()); err != nil {
		c.errorf(cmd, ExitOK, "warning: %v; the worker uses the last recorded settings", err)
	}

	q, err := enqueue(store, fs.Args(), !*wait && !*strict)
	if storageFault(err) && !*wait {
		return c.errorf(cmd, ExitOK, "error: %v; nothing queued, the previous state is kept", err)
	}
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	// consul-template logs our output, not register's warnings.
	c.warnRejections(cmd, q.rejections)
	if len(q.tickets) == 0 {
		if err := probeWritable(store.Dir()); storageFault(err) && !*wait {
			return c.errorf(cmd, ExitOK, "error: the state directory refuses writes (%v): this render's declarations were not registered, nothing queued", err)
		}
	}
	// consul-template exits when its command fails. A name the render did
	// not register (its declaration is data that is not there yet) must
	// not take it down: say so and go on.
	for _, name := range q.unknown {
		c.errorf(cmd, ExitOK, "warning: no action %q is registered in %s; nothing queued for it", name, store.Dir())
	}
	log.Debug("queued", "actions", ticketNames(q.tickets), "queue_length", q.queued)
	if q.queued == 0 {
		return ExitOK
	}
	if err := c.startWorker(store, *verbose); err != nil {
		if !*wait {
			// The request is on disk: the next exec or register starts a
			// worker for it. Failing would stop consul-template.
			c.errorf(cmd, ExitOK, "warning: %v; the actions stay queued", err)
			return ExitOK
		}
		return c.workerError(cmd, store, err)
	}
	if !*wait {
		return ExitOK
	}
	return c.waitFor(cmd, store, q.tickets, *waitTimeout, *verbose)
}

// enqueued is what exec's one state update queued and found.
type enqueued struct {
	tickets    []state.Ticket
	unknown    []string // names skipped as not registered (lenient only)
	queued     int      // the queue's length after the update
	rejections map[string]state.DeclError
}

// enqueue queues the named actions (none named: every pending one) in one
// state update. lenient skips names no template registered instead of
// failing on them.
func enqueue(store *state.Store, names []string, lenient bool) (enqueued, error) {
	var q enqueued
	err := store.Update(func(st *state.State) error {
		q = enqueued{rejections: st.ReportRejections()}
		known := names
		if lenient {
			known, q.unknown = splitRegistered(st, names)
			if len(known) == 0 && len(q.unknown) > 0 {
				// Only unknown names: queue nothing (an empty list would
				// mean every pending action).
				q.queued = st.QueueLen()
				return nil
			}
		}
		var err error
		q.tickets, err = st.Enqueue(known) // fails on unknown names
		q.queued = st.QueueLen()
		return err
	})
	return q, err
}

// splitRegistered separates the names of declared actions from the others.
func splitRegistered(st *state.State, names []string) (known, unknown []string) {
	for _, name := range names {
		if _, ok := st.Actions[name]; ok {
			known = append(known, name)
		} else {
			unknown = append(unknown, name)
		}
	}
	return known, unknown
}

// startWorker makes sure a worker drains the queue.
func (c *CLI) startWorker(store *state.Store, verbose bool) error {
	exe, err := worker.Executable()
	if err != nil {
		return err
	}
	args := []string{"-state-dir", store.Dir(), "-detached"}
	if verbose {
		args = append(args, "-verbose")
	}
	return worker.Start(store, exe, args)
}

// waitFor blocks until every ticket is covered by a finished run. It starts
// a new worker if the one draining the queue dies meanwhile.
func (c *CLI) waitFor(cmd string, store *state.Store, tickets []state.Ticket, limit time.Duration, verbose bool) int {
	var deadline time.Time
	if limit > 0 {
		deadline = time.Now().Add(limit)
	}
	for {
		st, err := store.Load()
		if err != nil {
			return c.errorf(cmd, ExitError, "%v", err)
		}
		remaining := 0
		for _, t := range tickets {
			if a := st.Actions[t.Name]; a != nil && a.Done < t.Seq {
				remaining++
			}
		}
		if remaining == 0 {
			return c.report(cmd, st, tickets)
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return c.errorf(cmd, ExitError, "%d action(s) still queued or running after -wait-timeout %s (they stay queued)", remaining, limit)
		}
		if st.QueueLen() > 0 {
			if err := c.startWorker(store, verbose); err != nil {
				return c.workerError(cmd, store, err)
			}
		}
		time.Sleep(execPollInterval)
	}
}

// workerError reports a worker that could not be started, or that failed
// at start, with the status that worker exited with (78 for bad Consul
// settings), rather than start one after another.
func (c *CLI) workerError(cmd string, store *state.Store, err error) int {
	code := ExitError
	if errors.Is(err, worker.ErrWorkerFailing) {
		if st, lerr := store.Load(); lerr == nil && st.WorkerFailure != nil && st.WorkerFailure.ExitCode != 0 {
			code = st.WorkerFailure.ExitCode
		}
	}
	return c.errorf(cmd, code, "%v; the actions stay queued", err)
}

// report prints failed actions and returns the status of the first failure.
func (c *CLI) report(cmd string, st *state.State, tickets []state.Ticket) int {
	code := ExitOK
	for _, t := range tickets {
		a := st.Actions[t.Name]
		if a == nil || a.Last == nil || a.Last.OK {
			continue
		}
		c.errorf(cmd, a.Last.ExitCode, "action %q failed: %s", t.Name, a.Last.Error)
		if code == ExitOK {
			code = a.Last.ExitCode
			if code == 0 {
				code = ExitError
			}
		}
	}
	return code
}

func ticketNames(ts []state.Ticket) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return strings.Join(names, ",")
}
