package lockexec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// outputDrainTime bounds how long we wait, after the child has exited, for
// its output pipes to close. A reload command that leaves a daemon behind
// holding our stdout would otherwise keep the lock held until that daemon
// exits.
const outputDrainTime = time.Second

// Process is one running command, started by Start. It is led by the
// process we started and lives in a process group of its own, so a signal
// sent to the group also reaches whatever the command spawned (a shell's
// children, a reload script's helpers).
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's error; read only after done is closed
}

// Start starts cmd the way ct-supervise starts every command, so that `run`,
// the worker and anything else that runs a command get the same treatment:
//
//   - every signal at its default disposition, whatever we inherited (see
//     restoreDefaultSignals);
//   - a process group of its own (Setpgid), so that signals reach all of it
//     and a terminal's ^C reaches it only through us;
//   - on Linux, SIGKILL when we die (the parent-death signal), so that a
//     killed worker does not leave its command running unsupervised.
//
// cmd.SysProcAttr is created or amended accordingly. The process is reaped
// in the background; Done is closed then.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Our own process group keeps a terminal's ^C from reaching the child
	// behind our back: it gets signals only through us, so we always know
	// whether it is being stopped. The price is that the group is not the
	// terminal's foreground group: a command that reads from a terminal
	// given as Stdin is stopped by SIGTTIN. Reload commands read nothing.
	cmd.SysProcAttr.Setpgid = true
	setParentDeathSignal(cmd.SysProcAttr)
	restoreDefaultSignals()

	p := &Process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the THREAD that forked the
		// child ends, not the process. Go ends a thread when a goroutine
		// locked to it exits, and otherwise reuses it; locking from Start
		// to the end of Wait pins one thread for the child's whole life
		// (Wait blocks a thread in wait4 anyway), so it cannot fire while
		// we live, and is unlocked only once the child is reaped.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// ignoredSink receives the signals restoreDefaultSignals takes over from an
// inherited SIG_IGN. Nobody reads it: a full channel drops what comes, so
// our own process goes on ignoring them, as it was told to.
var (
	ignoredSink   = make(chan os.Signal, 1)
	ignoredSinkMu sync.Mutex
)

// restoreDefaultSignals makes the next fork give the child SIG_DFL for every
// signal. exec keeps SIG_IGN and resets caught signals to SIG_DFL, and Go's
// forked child resets every signal the runtime handles. The runtime handles
// all of them, except SIGHUP and SIGINT when they were ignored at our start
// (nohup ignores SIGHUP, a non-interactive shell SIGINT for a background
// job), and any signal since signal.Ignore: those would stay ignored in the
// child, and a non-interactive shell cannot even trap a signal ignored on
// entry. Only HUP and INT matter in practice, as nothing of ours calls
// signal.Ignore. Asking
// the runtime to deliver them to a channel makes it handle them, so the
// child gets SIG_DFL; we drop what arrives, so for us nothing changes.
func restoreDefaultSignals() {
	ignoredSinkMu.Lock()
	defer ignoredSinkMu.Unlock()
	for _, sig := range []os.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signalIgnored(sig) {
			signal.Notify(ignoredSink, sig)
		}
	}
}

// startChild starts the command described by opts.
func startChild(opts *Options) (*Process, error) {
	argv := opts.argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	// Nil streams are what we want: os/exec connects them to /dev/null.
	cmd.Stdin = opts.Stdin
	cmd.Stdout = opts.Stdout
	cmd.Stderr = opts.Stderr
	cmd.Env = opts.Env
	cmd.WaitDelay = outputDrainTime
	p, err := Start(cmd)
	if err != nil {
		return nil, startError(argv[0], err)
	}
	return p, nil
}

// startError wraps the error of a command that could not be started in the
// sentinel a shell would report it as: not found (127) or not executable
// (126).
func startError(name string, err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s: %v", ErrCommandNotFound, name, err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("%w: %s: %v", ErrCommandNotExecutable, name, err)
	}
	return fmt.Errorf("starting the command: %w", err)
}

// Pid is the process ID of the command, which is also its process group ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the command has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is what exec.Cmd.Wait returned. Only valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Signal sends sig to the command's whole process group. Once the command
// has been reaped its group may be gone or, in theory, reused, so we stay
// quiet then.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("cannot forward signal %v", sig)
	}
	err := syscall.Kill(-p.Pid(), s)
	if errors.Is(err, syscall.ESRCH) {
		// The group emptied between our check and the kill.
		return nil
	}
	return err
}

// KillLeftovers SIGKILLs whatever is left of the command's process group
// after the command itself has exited, and reports whether anything was. A
// command we were stopping must be gone as a whole before the lock is given
// back; a shell's background jobs, for one, ignore SIGINT. While any member
// is left, the group's ID cannot have been given to anyone else.
func (p *Process) KillLeftovers() bool {
	return syscall.Kill(-p.Pid(), syscall.SIGKILL) == nil
}

// ExitCode is the command's status the way a shell reports it: its exit
// status, or 128+N when it died of signal N. Only valid once Done is closed.
func (p *Process) ExitCode() int {
	ps := p.cmd.ProcessState
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
