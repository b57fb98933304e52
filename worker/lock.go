package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ct-supervise/internal/ctxsleep"
	"ct-supervise/state"
)

// LockFile is the file in the state directory that the running worker holds
// an exclusive OS lock on; it also contains the worker's pid.
const LockFile = "worker.lock"

// ErrAlreadyRunning is returned when another worker holds the state
// directory.
var ErrAlreadyRunning = errors.New("another worker is already running for this state directory")

// Dir opens files in the state directory without following symlinks, as
// state.Store does: a worker.lock symlink planted there must not make us
// truncate its target.
type Dir interface {
	OpenFile(name string, flag int, perm os.FileMode) (*os.File, error)
}

// instanceLock is the worker's single-instance lock. The OS drops it when
// the process dies, however it dies, so a crashed worker never blocks its
// successor.
type instanceLock struct{ f *os.File }

// probeGrace is how long a busy lock is retried before we conclude that
// a worker holds it: RunningPID (exec, status) takes it shared for an
// instant to look, and a worker starting at that instant must not mistake
// the look for a rival and exit, leaving the queue to nobody.
const (
	probeGrace = 250 * time.Millisecond
	probeRetry = 10 * time.Millisecond
	waitRetry  = 250 * time.Millisecond
)

// acquireInstanceLock takes the worker lock. With wait, it keeps trying
// until ctx is done (a worker run as a service, started while a detached
// one still drains the queue); otherwise a lock held past probeGrace is
// ErrAlreadyRunning.
func acquireInstanceLock(ctx context.Context, dir Dir, wait bool) (*instanceLock, error) {
	f, err := dir.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening worker lock: %w", err)
	}
	deadline := time.Now().Add(probeGrace)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		retry := probeRetry
		if time.Now().After(deadline) {
			if !wait {
				f.Close()
				return nil, ErrAlreadyRunning
			}
			// A real worker: it may drain its queue for minutes.
			retry = waitRetry
		}
		if err := ctxsleep.Sleep(ctx, retry); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &instanceLock{f: f}, nil
}

// beforeRelease, if set (by tests), is called just before the instance lock
// is dropped.
var beforeRelease func()

// release drops the lock. Safe to call twice.
func (l *instanceLock) release() {
	if l.f == nil {
		return
	}
	if beforeRelease != nil {
		beforeRelease()
	}
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}

// RunningPID reports the pid of the worker holding the lock in dir, or 0
// when no worker is running.
func RunningPID(dir Dir) (int, error) {
	f, err := dir.OpenFile(LockFile, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// A shared lock succeeds only if no worker holds the exclusive one.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0, nil
	} else if !errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, fmt.Errorf("checking %s: %w", f.Name(), err)
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		// Held, but the pid is not written yet: report "running".
		return -1, nil
	}
	return pid, nil
}

// RunningPIDIn is RunningPID for the state directory at stateDir, opened
// with state.OpenExisting's checks, for tools and tests: 0 when the
// directory does not exist.
func RunningPIDIn(stateDir string) (int, error) {
	store, err := state.OpenExisting(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer store.Close()
	return RunningPID(store)
}
