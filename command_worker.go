package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/exitcode"
	"ct-supervise/state"
	"ct-supervise/worker"
)

// WorkerLogFile is the worker's log in the state directory. A write that
// would take it past WorkerLogMaxBytes first moves it to WorkerLogFile+".1"
// (replacing the previous one), so the two never hold more than twice that.
const (
	WorkerLogFile     = "worker.log"
	WorkerLogMaxBytes = 10 << 20
)

// workerLog is the worker's log file, rotated by size as it is written,
// and only while this process holds the worker's instance lock: a worker
// starting while another runs must not move the running one's log away,
// and two holders never exist at once.
type workerLog struct {
	store   *state.Store
	holding func() bool // whether we hold the worker's instance lock
	max     int64       // WorkerLogMaxBytes, smaller in tests

	mu   sync.Mutex
	f    *os.File
	size int64
	held bool // holding() was true once: f was reopened then
}

// openWorkerLog opens the log for appending, creating it (0600).
func openWorkerLog(store *state.Store, holding func() bool) (*workerLog, error) {
	l := &workerLog{store: store, holding: holding, max: WorkerLogMaxBytes}
	if err := l.reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *workerLog) reopen() error {
	f, err := l.store.OpenFile(WorkerLogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first when p would take the log past its cap.
// A log that cannot be rotated is still written: losing lines is worse.
func (l *workerLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size+int64(len(p)) > l.max && l.size > 0 && l.holding() {
		if !l.held {
			// Until now another worker may have rotated the file we have
			// open: size and rotate the current one.
			l.held = true
			_ = l.reopen()
		}
		if l.size+int64(len(p)) > l.max && l.size > 0 {
			if err := l.store.Rename(WorkerLogFile, WorkerLogFile+".1"); err == nil {
				_ = l.reopen()
			}
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

// Close closes the log file.
func (l *workerLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

const workerUsage = `Usage: ct-supervise worker [flags]

Drains the queue of the state directory: each queued action, in order, under
its Consul lock or semaphore. 'exec' starts one detached when needed; run it
in the foreground (e.g. from systemd, with -keep-running) to own it yourself;
in the foreground it waits for a worker already running to finish first.
Logs go to worker.log in the state directory, and to stderr in the foreground.
Actions run concurrently, each on its own track (at most one run of an
action at a time, at most -max-parallel actions at once), so a lock held
elsewhere holds up only its own action.

Consul is reached with the CONSUL_* settings consul-template gives its
commands, which every exec records in the state directory (token included,
readable by the owner only); until an exec has recorded any, with the
worker's own CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ... environment.

SIGINT/SIGTERM: actions waiting for their lock stop at once; a running
command gets -stop-grace to finish, then is terminated. Every lock is
released; unfinished actions stay queued for the next worker.

Flags:
`

// workerCommand is `ct-supervise worker`.
func (c *CLI) workerCommand(args []string) int {
	const cmd = "worker"
	fs := newFlagSet(cmd)
	stateDir := stateDirFlag(fs)
	detached := fs.Bool("detached", false, "log only to the log file (set by exec when it starts the worker)")
	keep := fs.Bool("keep-running", false, "keep running when the queue is empty (for a service manager)")
	verbose := fs.Bool("verbose", false, "debug logging")
	maxParallel := fs.Int("max-parallel", worker.DefaultMaxParallel, "run at most this many actions at once (each under its own lock)")
	stopGrace := fs.Duration("stop-grace", worker.DefaultStopGrace, "on SIGTERM, let a running command finish for this long before terminating it (0: at once)")
	node := nodeFlag(fs)
	if code, done := c.parseFlags(fs, cmd, workerUsage, args); done {
		return code
	}
	switch {
	case fs.NArg() > 0:
		return c.usageError(cmd, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	case *maxParallel < 1:
		return c.usageError(cmd, fmt.Errorf("-max-parallel must be at least 1, got %d", *maxParallel))
	case *stopGrace < 0:
		return c.usageError(cmd, fmt.Errorf("-stop-grace must not be negative, got %s", *stopGrace))
	}
	store, err := openStore(*stateDir)
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	logFile, err := openWorkerLog(store, func() bool {
		pid, _ := worker.RunningPID(store)
		return pid == os.Getpid()
	})
	if err != nil {
		return c.workerStartFailed(store, nil, fmt.Errorf("opening the log: %w", err))
	}
	defer logFile.Close()
	var out io.Writer = logFile
	if !*detached {
		out = io.MultiWriter(logFile, c.stderr)
	}
	log := newLogger(cmd, *verbose, out)

	runner, err := worker.NewConsulRunner(store)
	if err != nil {
		return c.workerStartFailed(store, log, err)
	}
	log.Debug("Consul connection settings", "from", runner.Source())
	runner.SetNode(*node, log)
	defer runner.Close()
	stopGraceOpt := *stopGrace
	if stopGraceOpt == 0 {
		stopGraceOpt = -1 // Options' zero is the default; the flag's is "at once"
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = worker.Run(ctx, worker.Options{
		Store:       store,
		Runner:      runner,
		Logger:      log,
		Output:      out,
		KeepRunning: *keep,
		// In the foreground (a service) wait for a detached worker that
		// exec started to finish, rather than fail and be restarted.
		WaitForLock: !*detached,
		MaxParallel: *maxParallel,
		StopGrace:   stopGraceOpt,
	})
	switch {
	case errors.Is(err, worker.ErrAlreadyRunning) && *detached:
		// Two execs raced to start a worker; the other one won.
		return ExitOK
	case err != nil:
		log.Error("worker stopped", "error", err)
		return c.errorf(cmd, ExitError, "%v", err)
	}
	return ExitOK
}

// appendWorkerLog writes one line to the worker's log on behalf of another
// subcommand (register's rejected declarations), so that the log holds
// every problem of the state directory. It never rotates: only the worker
// does, under its lock. Failing to log is not worth failing a render.
func appendWorkerLog(store *state.Store, cmd, msg string, args ...any) {
	f, err := store.OpenFile(WorkerLogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	newLogger(cmd, false, f).Warn(msg, args...)
}

// workerStartFailed reports a worker that cannot start where a detached
// one can be heard: its log (when log is not nil) and the state, which
// status shows and which keeps exec and register from starting another
// at once. Bad Consul settings exit exitcode.Config.
func (c *CLI) workerStartFailed(store *state.Store, log hclog.Logger, err error) int {
	code := ExitError
	if errors.Is(err, worker.ErrConsulConfig) {
		code = exitcode.Config
	}
	if log != nil {
		log.Error("worker cannot start", "error", err)
	}
	if rerr := worker.RecordStartFailure(store, err, code); rerr != nil && log != nil {
		log.Error("could not record the failure for status", "error", rerr)
	}
	return c.errorf("worker", code, "%v", err)
}
