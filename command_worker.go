package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"ct-supervise/lockexec"
	"ct-supervise/worker"
)

// WorkerLogFile is the worker's log in the state directory. A worker that
// starts with the log over WorkerLogMaxBytes moves it to WorkerLogFile+".1"
// (replacing the previous one), so the log never grows without bound.
const (
	WorkerLogFile     = "worker.log"
	WorkerLogMaxBytes = 10 << 20
)

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
	logPath := store.Path(WorkerLogFile)
	// Rotate only when no worker writes to the log: a worker racing another
	// one to start must not move the winner's log from under it.
	if pid, _ := worker.RunningPID(store.Path(worker.LockFile)); pid == 0 {
		if fi, err := os.Stat(logPath); err == nil && fi.Size() > WorkerLogMaxBytes {
			_ = os.Rename(logPath, logPath+".1")
		}
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return c.errorf(cmd, ExitError, "opening the log: %v", err)
	}
	defer logFile.Close()
	var out io.Writer = logFile
	if !*detached {
		out = io.MultiWriter(logFile, c.stderr)
	}
	log := newLogger(cmd, *verbose, out)

	runner, err := worker.NewConsulRunner(store)
	if err != nil {
		// A detached worker has no one to tell but its log and status.
		log.Error("worker cannot start", "error", err)
		code := ExitError
		if errors.Is(err, worker.ErrConsulConfig) {
			code = lockexec.ExitConfig
		}
		if rerr := worker.RecordStartFailure(store, err, code); rerr != nil {
			log.Error("could not record the failure for status", "error", rerr)
		}
		return c.errorf(cmd, code, "%v", err)
	}
	log.Debug("Consul connection settings", "from", runner.Source())
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
