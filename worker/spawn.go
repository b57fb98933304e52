package worker

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// Start launches a detached worker process unless one already holds the
// state directory: `exe worker ARGS...` in a session of its own, with no
// standard streams. That matters to consul-template: a command that left a
// pipe open behind it would hold up its runner, and a worker in its process
// group would be killed along with a timed-out command.
//
// Two exec calls may both find no worker and start one each; the second
// finds the lock taken and exits at once.
func Start(dir Dir, exe string, args []string) (started bool, err error) {
	pid, err := RunningPID(dir)
	if err != nil {
		return false, err
	}
	if pid != 0 {
		return false, nil
	}
	cmd := exec.Command(exe, append([]string{"worker"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Stdin, Stdout and Stderr stay nil: the worker gets /dev/null and logs
	// to its file in the state directory.
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("starting the worker: %w", err)
	}
	// Nothing waits for the worker: it outlives us and is adopted by init.
	_ = cmd.Process.Release()
	return true, nil
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
