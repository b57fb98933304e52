// Package state is the state directory that register, exec and the worker
// share: the state file (declared actions, where each stands in the queue,
// rejected declarations) behind a directory lock, and the queue policy:
// coalescing, retries and backoff. It runs nothing.
package state

import (
	"time"

	"ct-supervise/plugin"
)

// StateVersion is written into the state file so that a future format can be
// told apart from this one.
const StateVersion = 1

// State is everything kept in the state directory's state file: the declared
// actions and where each stands in the queue. It is read and written whole,
// under the directory lock, by Store.Update.
type State struct {
	// Version is StateVersion when written by this release.
	Version int `json:"version"`

	// Seq is the last queue sequence number handed out. Sequence numbers
	// order the queue and let `exec -wait` tell its own run from older ones.
	Seq uint64 `json:"seq"`

	// Actions are keyed by declaration name.
	Actions map[string]*Action `json:"actions"`

	// Errors are the last rejected data declarations (issue: a bad JSON
	// value in KV) keyed by declaration name, "" when no name could be read.
	// A later good declaration of the same name clears its entry.
	Errors map[string]DeclError `json:"errors,omitempty"`

	// WorkerFailure is why the last worker could not start, cleared by
	// the next one that does. exec and register do not start another
	// worker soon after one failed, and status shows it.
	WorkerFailure *WorkerFailure `json:"worker_failure,omitempty"`

	// RecordsSession is the Consul session that holds this node's fleet
	// records while its worker runs, left in place when the worker exits:
	// the next worker destroys it, so that a dead predecessor's records
	// read gone at once and its session does not linger until its TTL runs
	// out (for a predecessor that exited cleanly the session is gone
	// already).
	RecordsSession string `json:"records_session,omitempty"`
}

// WorkerFailure records a worker that could not start.
type WorkerFailure struct {
	Message  string    `json:"message"`
	ExitCode int       `json:"exit_code"`
	At       time.Time `json:"at"`
}

// DeclError records a declaration that was rejected.
type DeclError struct {
	Message string    `json:"message"`
	At      time.Time `json:"at"`

	// Reported is set once exec has repeated the warning into
	// consul-template's log, and cleared when the rejection is seen again.
	// A rejection with no name cannot be matched to the good declaration
	// that replaces it: the next good registration after a report clears it.
	Reported bool `json:"reported,omitempty"`
}

// Action is one declared action and its place in the queue.
type Action struct {
	// Declaration is the latest good declaration; a run always uses the
	// declaration current when it starts.
	Declaration plugin.Declaration `json:"declaration"`

	// DeclaredAt is when Declaration last changed.
	DeclaredAt time.Time `json:"declared_at"`

	// Pending is set by register and cleared by exec: the action was
	// (re)declared since it was last queued.
	Pending bool `json:"pending"`

	// Seq is the sequence number of the latest exec that queued the action;
	// Done is the Seq the last finished run (success or final failure)
	// covered. The action is queued while Seq > Done.
	Seq  uint64 `json:"seq"`
	Done uint64 `json:"done"`

	// Running is true while a worker runs the action, RunSeq being the Seq
	// the run covers. A worker that finds Running set at start-up knows its
	// predecessor died mid-run and runs the action again.
	Running bool   `json:"running"`
	RunSeq  uint64 `json:"run_seq"`

	// Holding is true once the running try holds the lock and its command
	// runs; Running without Holding is a try waiting for the lock.
	Holding bool `json:"holding,omitempty"`

	// Session is the Consul session of the running try, once created; PID
	// is its command's process (and process group) ID once started, and
	// PIDStart that process's start time in clock ticks since boot (field
	// 22 of /proc/PID/stat, zero where unknown). A worker that finds a run
	// its dead predecessor left behind stops that command, only if the pid
	// still names the same process, and gives back the session's lock.
	Session  string `json:"session,omitempty"`
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`

	// RunDeclaredAt is the DeclaredAt of the declaration the running try
	// uses, to tell whether the declaration changed since it began.
	RunDeclaredAt time.Time `json:"run_declared_at,omitempty"`

	// Phase is the step the running try is in (checking, waiting, halted,
	// paused, blocked, draining, running, gating, holding), PhaseDetail
	// what it waits on in one line, and PhaseSince when it began. Empty
	// when no try runs.
	Phase       string    `json:"phase,omitempty"`
	PhaseDetail string    `json:"phase_detail,omitempty"`
	PhaseSince  time.Time `json:"phase_since,omitempty"`

	// Attempts counts the failed tries that count towards MaxAttempts
	// (not the transient ones) since the last success or the last new
	// request; Failures counts every failed try in a row, and sets the
	// backoff. NextAttempt is when the next try may start (zero: now).
	Attempts    int       `json:"attempts"`
	Failures    int       `json:"failures,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitempty"`

	// Last is the outcome of the most recent try.
	Last *Outcome `json:"last,omitempty"`
}

// Outcome is the result of one try of an action.
type Outcome struct {
	// OK is true when the command exited 0 under the lock.
	OK bool `json:"ok"`

	// ExitCode is the exit status ct-supervise run would have returned for
	// this try (the child's own, or one of the documented codes).
	ExitCode int `json:"exit_code"`

	// Error describes a failure in one line; empty on success.
	Error string `json:"error,omitempty"`

	// Transient marks a failure that is not the action's fault (Consul
	// unreachable, a -n the fleet is part-way through changing): it is
	// retried with backoff but never counts towards MaxAttempts, so an
	// outage cannot make the fleet drop a reload.
	Transient bool `json:"transient,omitempty"`

	// Unreachable marks a transient failure where Consul could not be
	// reached: the worker watches for Consul to answer again and retries
	// then, instead of sleeping out the backoff.
	Unreachable bool `json:"unreachable,omitempty"`

	// Failed is true when the action was given up: after MaxAttempts, or
	// at once for a failure that NoRetry marks.
	Failed bool `json:"failed,omitempty"`

	// NoRetry marks a failure that retrying cannot mend, such as a failed
	// -check (a bad config does not become good by retrying): the action
	// is given up until a new request arrives.
	NoRetry bool `json:"no_retry,omitempty"`

	// MaintLeft names the service the failed try left in Consul
	// maintenance mode on this node (so that traffic stays away); empty
	// when none.
	MaintLeft string `json:"maint_left,omitempty"`

	// Seq is the queue sequence number the try covered.
	Seq uint64 `json:"seq"`

	// Started and Finished bracket the try, lock wait included.
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}
