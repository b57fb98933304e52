package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/state"
)

// A command left behind by a dead worker gets orphanTermGrace between
// SIGTERM and SIGKILL, and orphanKillWait for SIGKILL to take effect. Both
// are short: the next worker must free the lock within seconds (the run is
// repeated anyway), and reclaimTimeout bounds giving the lock back.
const (
	orphanTermGrace = 2 * time.Second
	orphanKillWait  = time.Second
	orphanPoll      = 50 * time.Millisecond
	reclaimTimeout  = 5 * time.Second
)

// orphan is a run that the previous worker did not finish.
type orphan struct {
	name     string
	prefix   string
	limit    int
	session  string
	holding  bool // the lock was held: the command may have started
	pid      int
	pidStart uint64
}

// recoverInterrupted handles the runs a dead predecessor left marked
// running: it stops each one's command if it is still running (only if the
// recorded pid still names the same process), gives back its lock or slot
// and destroys its session at once, instead of waiting out the session's
// TTL and lock-delay, and queues the action again. Consul is called without
// holding the state lock.
func (w *worker) recoverInterrupted(ctx context.Context) error {
	st, err := w.opts.Store.Load()
	if err != nil {
		return err
	}
	var orphans []orphan
	for _, name := range st.Interrupted() {
		a := st.Actions[name]
		orphans = append(orphans, orphan{name: name, prefix: a.Declaration.Prefix, limit: a.Declaration.Limit,
			session: a.Session, holding: a.Holding, pid: a.PID, pidStart: a.PIDStart})
	}
	var wg sync.WaitGroup
	for _, o := range orphans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.reclaim(ctx, o)
		}()
	}
	wg.Wait()
	return w.opts.Store.Update(func(st *state.State) error {
		for _, o := range orphans {
			st.Abandon(o.name)
		}
		// This worker started: exec and register may start the next one.
		st.WorkerFailure = nil
		return nil
	})
}

// reclaim stops one orphan's command and gives back its lock. When the
// command cannot be shown to be gone, the lock is left to expire with the
// session: freeing it would let another node in beside a running command.
func (w *worker) reclaim(ctx context.Context, o orphan) {
	log := w.log.Named(o.name)
	log.Warn("the previous worker stopped during this action; running it again", "session", o.session, "pid", o.pid)
	if o.holding && o.pid == 0 {
		// The lock is recorded before the command starts and its pid
		// after: the predecessor died in between, and a command may run
		// that nothing here can name.
		log.Warn("the dead worker held the lock but its command's pid was not recorded; its lock is freed when its session expires", "session", o.session)
		return
	}
	if err := stopOrphan(log, o.pid, o.pidStart); err != nil {
		log.Error("could not stop the dead worker's command; its lock is freed when its session expires", "pid", o.pid, "error", err)
		return
	}
	if o.session == "" {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, reclaimTimeout)
	defer cancel()
	if err := w.opts.Runner.Reclaim(rctx, o.prefix, o.limit, o.session); err != nil {
		log.Warn("could not give back the dead worker's lock; it is freed when its session expires", "session", o.session, "error", err)
		return
	}
	log.Info("gave back the dead worker's lock", "prefix", o.prefix, "session", o.session)
}

// stopOrphan stops what is left of the process group led by pid, the
// command a dead worker started at start (clock ticks since boot): SIGTERM,
// then SIGKILL after orphanTermGrace. nil means the command is gone.
//
// It never signals anyone else's processes. While pid runs, it is ours
// only if its start time matches. Once pid has exited (the parent-death
// signal kills it with its worker), a group that still answers to pid
// holds only what our command left behind: Linux hands out no pid that is
// still in use as a process group ID, so no newcomer can lead or join such
// a group.
func stopOrphan(log hclog.Logger, pid int, start uint64) error {
	if pid <= 0 {
		return nil // the command never started
	}
	now, err := processStartTime(pid)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if groupGone(pid, 0) {
			return nil
		}
	case err != nil:
		return err
	case start == 0:
		// Whether it is ours cannot be told: leave its lock to expire.
		return fmt.Errorf("pid %d is running, but its start time was not recorded", pid)
	case now != start:
		return nil // the pid now names another process
	}
	log.Warn("stopping the command the dead worker left running", "pgid", pid)
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if groupGone(pid, orphanTermGrace) {
		return nil
	}
	log.Warn("the command did not stop on SIGTERM; killing it", "pgid", pid, "grace", orphanTermGrace)
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if groupGone(pid, orphanKillWait) {
		return nil
	}
	return fmt.Errorf("process group %d still exists after SIGKILL", pid)
}

// groupGone waits up to d for the process group pgid to be empty. A leader
// that is a zombie (exited, not yet reaped by its new parent) counts as
// gone when nothing else is left that a signal could reach.
func groupGone(pgid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		err := syscall.Kill(-pgid, 0)
		if errors.Is(err, syscall.ESRCH) || onlyZombies(pgid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(orphanPoll)
	}
}

// onlyZombies reports whether every process of group pgid has exited and
// waits only to be reaped.
func onlyZombies(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil || len(f) < 3 {
			continue
		}
		// Fields after the command name: 0 state, 1 ppid, 2 pgrp.
		if f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			return false
		}
	}
	return true
}

// processStartTime is the start time of process pid in clock ticks since
// boot (field 22 of /proc/PID/stat). Together with the pid it names one
// process for good: a pid reused later has a later start time. The error
// wraps os.ErrNotExist when there is no such process.
func processStartTime(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	// Field 22 overall is index 19 after the command name (fields 1, 2).
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// procStat returns the fields of /proc/PID/stat after the command name,
// which may itself contain spaces and parentheses.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(s[i+1:]), nil
}
