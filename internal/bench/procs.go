package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"ct-supervise/worker"
)

// errClosed is returned when a process is started after clean-up began.
var errClosed = errors.New("benchmark is shutting down")

// procs tracks every process the benchmark starts so that all of them are
// stopped at the end, on error and on Ctrl-C alike. Each one is started in a
// process group of its own and signalled as a group. Workers that `exec`
// detaches escape any group of ours; they are found through the state
// directories they serve.
type procs struct {
	mu        sync.Mutex
	closed    bool
	groups    map[int]struct{}
	stateDirs map[string]struct{}
}

func newProcs() *procs {
	return &procs{groups: map[int]struct{}{}, stateDirs: map[string]struct{}{}}
}

// start starts cmd in a new process group and tracks it until wait.
func (p *procs) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errClosed
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.groups[cmd.Process.Pid] = struct{}{}
	return nil
}

// wait waits for a process started with start and stops tracking it.
func (p *procs) wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	p.mu.Lock()
	delete(p.groups, cmd.Process.Pid)
	p.mu.Unlock()
	return err
}

// trackStateDir remembers a state directory whose worker must be stopped
// at the end.
func (p *procs) trackStateDir(dir string) {
	p.mu.Lock()
	p.stateDirs[dir] = struct{}{}
	p.mu.Unlock()
}

// workerPID is the pid of the worker serving dir, 0 if none runs.
func workerPID(dir string) int {
	pid, err := worker.RunningPIDIn(dir)
	if err != nil || pid < 0 {
		return 0
	}
	return pid
}

// waitWorkersGone waits until no worker runs for any of dirs.
func waitWorkersGone(ctx context.Context, dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		running := 0
		for _, d := range dirs {
			if workerPID(d) != 0 {
				running++
			}
		}
		if running == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d worker(s) still running after %s", running, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopAll stops every tracked process group and worker: SIGTERM, so that
// lock holders release and forward it to their commands, then SIGKILL for
// whatever is left after the grace period. No process is started after it.
func (p *procs) stopAll(grace time.Duration) {
	p.mu.Lock()
	p.closed = true
	groups := make([]int, 0, len(p.groups))
	for g := range p.groups {
		groups = append(groups, g)
	}
	dirs := make([]string, 0, len(p.stateDirs))
	for d := range p.stateDirs {
		dirs = append(dirs, d)
	}
	p.mu.Unlock()

	workers := map[string]int{}
	for _, d := range dirs {
		if pid := workerPID(d); pid > 0 {
			workers[d] = pid
			// The worker leads its own session, hence its own group.
			_ = syscall.Kill(-pid, syscall.SIGTERM)
		}
	}
	for _, g := range groups {
		_ = syscall.Kill(-g, syscall.SIGTERM)
	}

	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		left := len(p.groups)
		p.mu.Unlock()
		for d := range workers {
			if workerPID(d) == 0 {
				delete(workers, d)
			}
		}
		if left == 0 && len(workers) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	for g := range p.groups {
		_ = syscall.Kill(-g, syscall.SIGKILL)
	}
	p.mu.Unlock()
	for _, pid := range workers {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	// Give the waiters a moment to reap what was killed.
	time.Sleep(100 * time.Millisecond)
}

// runResult is one finished process.
type runResult struct {
	Wall     time.Duration
	MaxRSSKB int64
	ExitCode int
	Stdout   string
	Stderr   string
}

// runOnce starts argv the way consul-template starts a plugin or a
// template command (standard output and error captured through pipes),
// waits for it and measures the wall time from just before fork to just
// after reaping. An exit status other than 0 is an error.
func (p *procs) runOnce(ctx context.Context, env []string, argv ...string) (runResult, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := ctx.Err(); err != nil {
		return runResult{}, err
	}
	t0 := time.Now()
	if err := p.start(cmd); err != nil {
		return runResult{}, err
	}
	err := p.wait(cmd)
	res := runResult{
		Wall:     time.Since(t0),
		MaxRSSKB: maxRSSKB(cmd.ProcessState),
		ExitCode: cmd.ProcessState.ExitCode(),
		Stdout:   stdout.String(),
		Stderr:   stderr.String(),
	}
	if err != nil {
		return res, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// maxRSSKB is the peak resident set of a reaped process in KiB, as wait4
// reports it (Linux: the process itself or the largest of the descendants
// it waited for, whichever is larger).
func maxRSSKB(ps *os.ProcessState) int64 {
	if ps == nil {
		return 0
	}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

// vmHWMKB reads the peak resident set of a running process (not our child)
// from /proc, in KiB; 0 if unavailable.
func vmHWMKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}
