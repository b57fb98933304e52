package lockexec

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// outputDrainTime bounds how long we wait, after the child has exited, for
// its output pipes to close. A reload command that leaves a daemon behind
// holding our stdout would otherwise keep the lock held until that daemon
// exits.
const outputDrainTime = time.Second

// child is one running command. It is led by the process we started and
// lives in a process group of its own, so a signal sent to the group also
// reaches whatever the command spawned (a shell's children, a reload
// script's helpers).
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's error; read only after done is closed
}

// startChild starts the command described by opts.
func startChild(opts *Options) (*child, error) {
	argv := opts.argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	// Nil streams are what we want: os/exec connects them to /dev/null.
	cmd.Stdin = opts.Stdin
	cmd.Stdout = opts.Stdout
	cmd.Stderr = opts.Stderr
	cmd.Env = opts.Env
	cmd.WaitDelay = outputDrainTime
	// Our own process group keeps a terminal's ^C from reaching the child
	// behind our back: it gets signals only through us, so we always know
	// whether it is being stopped. The price is that the group is not the
	// terminal's foreground group: a command that reads from a terminal
	// given as Stdin is stopped by SIGTTIN. Reload commands read nothing.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// pid is the process ID of the command, which is also its process group ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// signal sends sig to the child's whole process group. Once the child has
// been reaped its group may be gone or, in theory, reused, so we stay quiet
// then.
func (c *child) signal(sig os.Signal) error {
	select {
	case <-c.done:
		return nil
	default:
	}
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("cannot forward signal %v", sig)
	}
	err := syscall.Kill(-c.pid(), s)
	if errors.Is(err, syscall.ESRCH) {
		// The group emptied between our check and the kill.
		return nil
	}
	return err
}

// killLeftovers SIGKILLs whatever is left of the child's process group
// after the child itself has exited, and reports whether anything was. A
// command we were stopping must be gone as a whole before the lock is given
// back; a shell's background jobs, for one, ignore SIGINT. While any member
// is left, the group's ID cannot have been given to anyone else.
func (c *child) killLeftovers() bool {
	return syscall.Kill(-c.pid(), syscall.SIGKILL) == nil
}

// exitCode is the child's status the way a shell reports it: its exit
// status, or 128+N when it died of signal N. Only valid after done.
func (c *child) exitCode() int {
	ps := c.cmd.ProcessState
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
