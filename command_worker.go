package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/consul/api"

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
Consul is reached through the CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...
environment. SIGINT/SIGTERM stop the running action (its lock is released)
and leave it queued.

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
	if code, done := c.parseFlags(fs, cmd, workerUsage, args); done {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(cmd, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	store, err := openStore(*stateDir)
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	logPath := store.Path(WorkerLogFile)
	// Rotate only when no worker writes to the log: a worker racing another
	// one to start must not move the winner's log from under it.
	if pid, _ := worker.RunningPID(store); pid == 0 {
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

	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		return c.errorf(cmd, ExitError, "consul client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = worker.Run(ctx, worker.Options{
		Store:       store,
		Runner:      lockexec.New(client),
		Logger:      log,
		Output:      out,
		KeepRunning: *keep,
		// In the foreground (a service) wait for a detached worker that
		// exec started to finish, rather than fail and be restarted.
		WaitForLock: !*detached,
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
