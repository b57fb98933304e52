package worker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"ct-supervise/state"
)

// StartRetryDelay is how long after a worker failed at start exec and
// register start no other: a worker that cannot start (a bad CA file, say)
// fails the same way the next time, and consul-template calls register
// several times per render.
const StartRetryDelay = 10 * time.Second

// ErrWorkerFailing is returned by Start while a recent worker failure at
// start holds off another try.
var ErrWorkerFailing = errors.New("the worker failed at start")

// Start launches a detached worker process unless one already holds the
// state directory: `exe worker ARGS...` in a session of its own, with no
// standard streams. That matters to consul-template: a command that left a
// pipe open behind it would hold up its runner, and a worker in its process
// group would be killed along with a timed-out command.
//
// Within StartRetryDelay of a worker's failure at start it starts none and
// returns an error wrapping ErrWorkerFailing that says why that one failed.
//
// Two exec calls may both find no worker and start one each; the second
// finds the lock taken and exits at once.
func Start(store *state.Store, exe string, args []string) error {
	pid, err := RunningPID(store)
	if err != nil || pid != 0 {
		return err
	}
	st, err := store.Load()
	if err != nil {
		return err
	}
	if f := st.WorkerFailure; f != nil && time.Since(f.At) < StartRetryDelay {
		return fmt.Errorf("%w at %s (%s); not starting another before %s",
			ErrWorkerFailing, f.At.Format(time.RFC3339), f.Message, f.At.Add(StartRetryDelay).Format(time.RFC3339))
	}
	cmd := exec.Command(exe, append([]string{"worker"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Stdin, Stdout and Stderr stay nil: the worker gets /dev/null and logs
	// to its file in the state directory.
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the worker: %w", err)
	}
	// Nothing waits for the worker: it outlives us and is adopted by init.
	_ = cmd.Process.Release()
	return nil
}

// RecordStartFailure records why a worker could not start, for status and
// for Start's back-off. code is the status the worker exits with.
func RecordStartFailure(store *state.Store, why error, code int) error {
	return store.Update(func(st *state.State) error {
		st.WorkerFailure = &state.WorkerFailure{Message: why.Error(), ExitCode: code, At: time.Now().UTC()}
		return nil
	})
}

// Executable is the path of the running ct-supervise binary, used to start
// the worker with the same build.
func Executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding our own executable: %w", err)
	}
	return exe, nil
}
