// Package lockexec runs one command while holding a Consul lock (limit 1) or
// a slot of a Consul semaphore (limit > 1), the way `consul lock` does, and
// always gives the lock back and destroys its session before returning.
//
// Runner.Run does it all. Runner.Acquire hands out the lock as a Lease
// whose Context is fenced: it is cancelled when the lock is lost or can no
// longer be confirmed in time, before anybody else could acquire (see
// fence.go), so that any work, not only a command, can run under it.
// Start is how every command is started, with default signal dispositions.
package lockexec

import (
	"errors"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Defaults used when the matching Options field is zero. They follow
// `consul lock` so that operators get the behaviour they already know.
const (
	// DefaultLimit is the number of holders: one means a plain lock.
	DefaultLimit = 1

	// DefaultMonitorRetries is what the CLI passes for -monitor-retry. In
	// Options a zero MonitorRetries disables retrying, as in consul's api.
	DefaultMonitorRetries = 3

	// DefaultMonitorRetryTime is the wait between monitor retries.
	DefaultMonitorRetryTime = time.Second

	// DefaultSessionTTL is the TTL of the session that holds the lock. A
	// crashed holder's lock is freed at most about twice this long later.
	DefaultSessionTTL = 15 * time.Second

	// DefaultKillGrace is how long a child has between SIGTERM and SIGKILL
	// when the lock is lost, -timeout expires or we are shutting down.
	DefaultKillGrace = 5 * time.Second

	// LockKeySuffix is appended to the prefix to form the lock key, as
	// `consul lock` does; a semaphore keeps its contender keys beside it.
	LockKeySuffix = ".lock"
)

// Sentinel errors. Callers map them to exit codes with errors.Is.
var (
	// ErrInvalidOptions means Options failed validation; nothing was
	// created in Consul.
	ErrInvalidOptions = errors.New("invalid options")

	// ErrNotAcquired means the lock was not acquired within Options.Try.
	ErrNotAcquired = errors.New("lock not acquired within the -try timeout")

	// ErrLockLost means the lock was lost, or could no longer be confirmed
	// in time (the fence), while it was held; the command was terminated.
	// A Lease's context is cancelled with a cause wrapping it.
	ErrLockLost = errors.New("lock lost")

	// ErrLimitMismatch means another holder uses the same prefix with a
	// different limit (or as a lock rather than a semaphore).
	ErrLimitMismatch = errors.New("holders limit mismatch on the lock prefix")

	// ErrConsulUnreachable means Consul could not be reached to create the
	// session or acquire the lock.
	ErrConsulUnreachable = errors.New("consul unreachable")

	// ErrTimeout means the command ran longer than Options.Timeout and was
	// terminated.
	ErrTimeout = errors.New("command exceeded its -command-timeout")

	// ErrPermissionDenied means Consul's ACLs refused a request (403): the
	// token may not write the lock's keys or create sessions.
	ErrPermissionDenied = errors.New("permission denied by Consul")

	// ErrCommandNotFound means the command does not exist; nothing ran.
	ErrCommandNotFound = errors.New("command not found")

	// ErrCommandNotExecutable means the command exists but cannot be
	// executed (no permission, not a program); nothing ran.
	ErrCommandNotExecutable = errors.New("command not executable")

	// ErrInterrupted means a signal or a cancelled context stopped the run,
	// before or while the command ran.
	ErrInterrupted = errors.New("interrupted")
)

// Options describes one guarded run. Every field says what its zero value
// does.
type Options struct {
	// Prefix is the KV prefix of the lock or semaphore. Required. All
	// holders that must exclude each other use the same prefix.
	Prefix string

	// Limit is the number of concurrent holders. Zero means DefaultLimit;
	// above one a semaphore is used. Every holder on a prefix must agree.
	Limit int

	// SessionName names the Consul session. Empty means "ct-supervise " +
	// Prefix.
	SessionName string

	// Try bounds the wait to acquire. Zero waits forever.
	Try time.Duration

	// MonitorRetries is how many Consul 500 errors are ridden out while
	// monitoring a held lock. Zero disables retrying.
	MonitorRetries int

	// MonitorRetryTime is the wait between monitor retries. Zero means
	// DefaultMonitorRetryTime.
	MonitorRetryTime time.Duration

	// SessionTTL is the TTL of the session. Zero means DefaultSessionTTL.
	SessionTTL time.Duration

	// LockDelay is the session's lock-delay, applied by Consul only when a
	// session is invalidated while holding the lock (never on a clean
	// release). Zero means DefaultLockDelay, Consul's default. The fence
	// stops the command before it runs out; semaphore contenders wait as
	// long before reusing a vanished holder's slot, so every holder on a
	// prefix must use the same one. It must leave the fence room: see
	// fence.go.
	LockDelay time.Duration

	// Command is a command line (one element) or an argument vector
	// (several). A command line is run by /bin/sh -c with Shell, and
	// split on white space without. An argument vector runs exactly as
	// given: directly, or with Shell as a script of its elements each
	// quoted. Required.
	Command []string

	// Shell runs Command through /bin/sh -c.
	Shell bool

	// Stdin is given to the child. Nil gives it no input (/dev/null).
	Stdin io.Reader

	// Stdout and Stderr receive the child's output. Nil discards it.
	Stdout io.Writer
	Stderr io.Writer

	// Env is the child's environment. Nil inherits ours.
	Env []string

	// Timeout kills the child if it runs longer. Zero means no limit.
	Timeout time.Duration

	// KillGrace is the time between SIGTERM and SIGKILL. Zero means
	// DefaultKillGrace. When the lock is lost it is cut short, to at most
	// DefaultKillGrace, so that the command is dead before anybody else
	// could acquire (see fence.go).
	KillGrace time.Duration

	// Signals, if not nil, delivers signals received by the caller. While the
	// child runs they are forwarded to its process group; before it starts,
	// SIGINT or SIGTERM abandons the wait (ErrInterrupted).
	Signals <-chan os.Signal

	// Logger receives our own log lines. Nil discards them.
	Logger hclog.Logger

	// OnAcquired, if not nil, is called once the lock or slot is held, just
	// before the command starts. It must return quickly: the worker uses it
	// to tell "waiting for the lock" from "running" in status.
	OnAcquired func()

	// BeforeTake, if not nil, is called each time the waiter has seen the
	// lock (or a semaphore slot) free and is about to try to take it: so
	// after the release it waits for, and before the write that may make
	// it the holder. A read started from it sees everything written before
	// that release, as a read once the lock is held would, one round trip
	// sooner. It may be called several times in one wait, from the wait's
	// own goroutine, and must not block. A semaphore waiter handed a slot
	// (it takes nothing) calls it once it finds the slot its own: the last
	// call always follows the release that made us the holder.
	BeforeTake func()

	// OnSession, if not nil, is called with the session ID as soon as the
	// session exists, before waiting for the lock. It must return quickly.
	OnSession func(id string)

	// OnStarted, if not nil, is called with the child's pid (which is also
	// its process group ID) as soon as it has started. It must return
	// quickly.
	OnStarted func(pid int)
}

// Result reports what happened. It is meaningful even when Run returns an
// error.
type Result struct {
	// Started is true once the child was started under the lock.
	Started bool

	// ExitCode is the child's exit status; 128+N if it died of signal N; -1
	// if it never started.
	ExitCode int

	// Session is the ID of the session used (already destroyed on return).
	Session string

	// Waited is how long acquiring took; Ran is how long the child ran.
	Waited time.Duration
	Ran    time.Duration
}
