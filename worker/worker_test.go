package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	actionpkg "ct-supervise/action"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
)

// fakeRunner stands in for Consul in the worker's unit tests: run decides
// each try's result, by the declaration's session name.
type fakeRunner struct {
	run  func(ctx context.Context, opts lockexec.Options) (lockexec.Result, error)
	ping func() error

	mu       sync.Mutex
	tries    map[string]int // by action name
	running  int
	peak     int
	reclaims []string
}

func newFake(run func(ctx context.Context, opts lockexec.Options) (lockexec.Result, error)) *fakeRunner {
	return &fakeRunner{run: run, tries: map[string]int{}}
}

// actionName recovers the action name from the options plugin sets.
func actionName(o lockexec.Options) string { return o.SessionName[len("ct-supervise "):] }

func (f *fakeRunner) Run(ctx context.Context, ao actionpkg.Options) (actionpkg.Result, error) {
	o := ao.Lock
	f.mu.Lock()
	f.tries[actionName(o)]++
	f.running++
	f.peak = max(f.peak, f.running)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	if o.OnSession != nil {
		o.OnSession("session-" + actionName(o))
	}
	res, err := f.run(ctx, o)
	return actionpkg.Result{Result: res}, err
}

func (f *fakeRunner) Reclaim(_ context.Context, prefix string, limit int, session string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reclaims = append(f.reclaims, fmt.Sprintf("%s n=%d %s", prefix, limit, session))
	return nil
}

func (f *fakeRunner) Ping(context.Context) error {
	if f.ping == nil {
		return errors.New("unreachable")
	}
	return f.ping()
}

func (f *fakeRunner) triesOf(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries[name]
}

// ok is a try whose command ran and exited 0.
func ok(_ context.Context, o lockexec.Options) (lockexec.Result, error) {
	if o.OnAcquired != nil {
		o.OnAcquired()
	}
	return lockexec.Result{Started: true, ExitCode: 0}, nil
}

// holdUntil is a try whose command runs until release is closed, or is
// stopped when ctx is cancelled (exit 143, as SIGTERM would make it).
func holdUntil(release <-chan struct{}) func(context.Context, lockexec.Options) (lockexec.Result, error) {
	return func(ctx context.Context, o lockexec.Options) (lockexec.Result, error) {
		if o.OnAcquired != nil {
			o.OnAcquired()
		}
		select {
		case <-release:
			return lockexec.Result{Started: true, ExitCode: 0}, nil
		case <-ctx.Done():
			return lockexec.Result{Started: true, ExitCode: 143}, fmt.Errorf("%w (prefix %q)", lockexec.ErrInterrupted, o.Prefix)
		}
	}
}

// waitForLock is a try that waits for a lock held elsewhere until ctx is
// cancelled.
func waitForLock(ctx context.Context, _ lockexec.Options) (lockexec.Result, error) {
	<-ctx.Done()
	return lockexec.Result{ExitCode: -1}, fmt.Errorf("%w while waiting: %v", lockexec.ErrInterrupted, ctx.Err())
}

// newStore returns a state directory with the named actions declared and
// queued.
func newStore(t *testing.T, maxAttempts int, names ...string) *state.Store {
	t.Helper()
	s, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		d := plugin.DefaultDeclaration()
		d.Name, d.Command, d.MaxAttempts = n, []string{"true"}, maxAttempts
		if err := d.Finish(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Register(d, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	enqueue(t, s, names...)
	return s
}

func enqueue(t *testing.T, s *state.Store, names ...string) {
	t.Helper()
	err := s.Update(func(st *state.State) error {
		_, err := st.Enqueue(names)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func action(t *testing.T, s *state.Store, name string) *state.Action {
	t.Helper()
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Actions[name]
}

// bgWorker is a worker startWorker runs in the background; the test's
// cleanup cancels it and waits for Run to return.
type bgWorker struct {
	cancel context.CancelFunc
	done   chan error
}

func startWorker(t *testing.T, opts Options) *bgWorker {
	t.Helper()
	if opts.PollInterval == 0 {
		opts.PollInterval = 10 * time.Millisecond
	}
	if opts.Backoff == (state.Backoff{}) {
		opts.Backoff = state.Backoff{Base: time.Millisecond, Max: time.Millisecond}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &bgWorker{cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(20 * time.Second):
			t.Error("the worker did not stop")
		}
	})
	return w
}

// wait waits for Run to return by itself.
func (w *bgWorker) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-w.done:
		w.done <- err // for the cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("the worker did not return within %s", timeout)
		return nil
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stopping the worker while an action waits for its lock leaves the action
// queued, with no try counted against it.
func TestStopAbandonsWaitingAction(t *testing.T) {
	s := newStore(t, 3, "a")
	f := newFake(waitForLock)
	w := startWorker(t, Options{Store: s, Runner: f})
	eventually(t, "the try to start", func() bool { return f.triesOf("a") == 1 })
	w.cancel()
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	a := action(t, s, "a")
	if !a.Queued() || a.Running || a.Attempts != 0 || a.Last != nil || a.Session != "" {
		t.Fatalf("after a stop while waiting: queued=%v running=%v attempts=%d last=%v session=%q; want queued, nothing counted",
			a.Queued(), a.Running, a.Attempts, a.Last, a.Session)
	}
}

// A command running when the worker is stopped may finish within the stop
// grace; its success is recorded.
func TestStopGraceLetsRunningCommandFinish(t *testing.T) {
	s := newStore(t, 3, "a")
	release := make(chan struct{})
	f := newFake(holdUntil(release))
	w := startWorker(t, Options{Store: s, Runner: f, StopGrace: time.Minute})
	eventually(t, "the command to run", func() bool { return action(t, s, "a").Holding })
	w.cancel()
	select {
	case err := <-w.done:
		t.Fatalf("the worker returned (%v) without waiting for the running command", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if a := action(t, s, "a"); a.Queued() || a.Last == nil || !a.Last.OK {
		t.Fatalf("a command that finished within the grace: queued=%v last=%+v; want done and ok", a.Queued(), a.Last)
	}
}

// Past the stop grace the command is stopped and the action stays queued.
func TestStopGraceExpiresAndLeavesQueued(t *testing.T) {
	s := newStore(t, 3, "a")
	f := newFake(holdUntil(make(chan struct{})))
	w := startWorker(t, Options{Store: s, Runner: f, StopGrace: 100 * time.Millisecond})
	eventually(t, "the command to run", func() bool { return action(t, s, "a").Holding })
	w.cancel()
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if a := action(t, s, "a"); !a.Queued() || a.Running || a.Attempts != 0 {
		t.Fatalf("a command stopped past the grace: queued=%v running=%v attempts=%d; want queued, nothing counted", a.Queued(), a.Running, a.Attempts)
	}
}

// Consul outages, a lock lost (its command stopped by the fence) and a -n
// the fleet is changing are retried without using up attempts; the
// action's own failures count, and it is given up after MaxAttempts.
func TestTransientVersusCountedFailures(t *testing.T) {
	s := newStore(t, 2, "a")
	var mu sync.Mutex
	n := 0
	f := newFake(func(ctx context.Context, o lockexec.Options) (lockexec.Result, error) {
		mu.Lock()
		n++
		try := n
		mu.Unlock()
		switch try {
		case 1:
			return lockexec.Result{ExitCode: -1}, fmt.Errorf("%w: creating session: refused", lockexec.ErrConsulUnreachable)
		case 2:
			o.OnAcquired()
			return lockexec.Result{Started: true, ExitCode: 143}, fmt.Errorf("%w: not confirmed in time", lockexec.ErrLockLost)
		case 3:
			return lockexec.Result{ExitCode: -1}, fmt.Errorf("%w: -n=2 elsewhere", lockexec.ErrLimitMismatch)
		}
		o.OnAcquired()
		return lockexec.Result{Started: true, ExitCode: 3}, nil
	})
	w := startWorker(t, Options{Store: s, Runner: f})
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	a := action(t, s, "a")
	if got := f.triesOf("a"); got != 5 {
		t.Fatalf("%d tries, want 5: 3 transient failures that do not count, then 2 failures (max attempts 2)", got)
	}
	if a.Queued() || a.Last == nil || !a.Last.Failed || a.Last.ExitCode != 3 {
		t.Fatalf("last = %+v, want given up with exit 3", a.Last)
	}
}

// After an outage the action runs as soon as Consul answers, not when its
// (here one hour) backoff has passed.
func TestOutageRetriesWhenConsulAnswers(t *testing.T) {
	s := newStore(t, 3, "a")
	var mu sync.Mutex
	down := true
	f := newFake(func(ctx context.Context, o lockexec.Options) (lockexec.Result, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return lockexec.Result{ExitCode: -1}, fmt.Errorf("%w: refused", lockexec.ErrConsulUnreachable)
		}
		return ok(ctx, o)
	})
	f.ping = func() error {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return errors.New("refused")
		}
		return nil
	}
	w := startWorker(t, Options{Store: s, Runner: f, OutagePoll: 50 * time.Millisecond,
		Backoff: state.Backoff{Base: time.Hour, Max: time.Hour}})
	eventually(t, "the first try to fail", func() bool { return action(t, s, "a").Last != nil })
	time.Sleep(200 * time.Millisecond) // a few pings while Consul is down
	if got := f.triesOf("a"); got != 1 {
		t.Fatalf("%d tries while Consul was down, want 1", got)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if a := action(t, s, "a"); a.Last == nil || !a.Last.OK {
		t.Fatalf("last = %+v, want ok", a.Last)
	}
}

// One action waiting for its lock holds up no other action.
func TestActionsRunOnTracksOfTheirOwn(t *testing.T) {
	s := newStore(t, 3, "a", "b")
	f := newFake(func(ctx context.Context, o lockexec.Options) (lockexec.Result, error) {
		if actionName(o) == "a" {
			return waitForLock(ctx, o)
		}
		return ok(ctx, o)
	})
	startWorker(t, Options{Store: s, Runner: f})
	eventually(t, "b to run while a waits", func() bool {
		b := action(t, s, "b")
		return b.Last != nil && b.Last.OK && !b.Queued()
	})
	if a := action(t, s, "a"); !a.Running {
		t.Fatal("a is not waiting for its lock")
	}
	// A new request for b runs it again, a still waiting.
	enqueue(t, s, "b")
	eventually(t, "b's second run", func() bool { return f.triesOf("b") == 2 && !action(t, s, "b").Queued() })
	if got := f.triesOf("a"); got != 1 {
		t.Fatalf("a tried %d times, want 1 (one run at a time per action)", got)
	}
}

// No more than MaxParallel actions are under way at once; the rest wait
// their turn and run.
func TestMaxParallel(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	s := newStore(t, 3, names...)
	f := newFake(func(ctx context.Context, o lockexec.Options) (lockexec.Result, error) {
		time.Sleep(50 * time.Millisecond)
		return ok(ctx, o)
	})
	w := startWorker(t, Options{Store: s, Runner: f, MaxParallel: 2})
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, n := range names {
		if got := f.triesOf(n); got != 1 {
			t.Errorf("%s ran %d times, want 1", n, got)
		}
	}
	if f.peak != 2 {
		t.Fatalf("at most %d actions ran at once, want 2 (MaxParallel)", f.peak)
	}
}

// The worker lets go of its instance lock only under the state lock, after
// seeing an empty queue: a request queued while the worker is about to exit
// is either seen by it or finds no worker (and exec starts one).
func TestInstanceLockReleasedUnderStateLock(t *testing.T) {
	s := newStore(t, 3, "a")
	var stateLocked []bool
	beforeRelease = func() {
		// Someone holds the state lock if a non-blocking one fails.
		f, err := os.Open(filepath.Join(s.Dir(), "state.lock"))
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		stateLocked = append(stateLocked, errors.Is(err, syscall.EWOULDBLOCK))
	}
	t.Cleanup(func() { beforeRelease = nil })
	f := newFake(ok)
	w := startWorker(t, Options{Store: s, Runner: f})
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(stateLocked) == 0 || !stateLocked[0] {
		t.Fatalf("the worker let go of its instance lock without holding the state lock (%v)", stateLocked)
	}
	if pid, _ := RunningPID(s); pid != 0 {
		t.Fatalf("the instance lock is still held (pid %d) after Run returned", pid)
	}
}

// A request queued while an action's last run finishes is not lost: the
// worker runs it before it exits.
func TestRequestDuringLastRunIsNotLost(t *testing.T) {
	s := newStore(t, 3, "a")
	release := make(chan struct{})
	f := newFake(holdUntil(release))
	w := startWorker(t, Options{Store: s, Runner: f})
	eventually(t, "a to run", func() bool { return action(t, s, "a").Holding })
	err := s.Update(func(st *state.State) error {
		close(release) // a finishes; the worker needs the state lock to record it
		time.Sleep(100 * time.Millisecond)
		_, err := st.Enqueue([]string{"a"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := f.triesOf("a"); got != 2 {
		t.Fatalf("a ran %d times, want 2: the request made during its run was lost", got)
	}
}

// A worker finding a run its dead predecessor left behind stops the
// command that run left (it is the same process: the start time matches),
// gives back the lock and reruns the action.
func TestRecoverStopsOrphanAndReclaims(t *testing.T) {
	s := newStore(t, 3, "a", "b")
	orphan := startGroupLeader(t)
	// b's recorded pid now names another process (a start time that does
	// not match: pid reuse), which must be left alone.
	other := startGroupLeader(t)
	err := s.Update(func(st *state.State) error {
		for _, n := range []string{"a", "b"} {
			if _, _, err := st.Begin(n); err != nil {
				return err
			}
			st.RecordSession(n, "dead-"+n)
		}
		st.Acquired("a")
		st.RecordChild("a", orphan.pid, orphan.start)
		st.Acquired("b")
		st.RecordChild("b", other.pid, other.start+1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f := newFake(ok)
	w := startWorker(t, Options{Store: s, Runner: f})
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case <-orphan.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the orphaned command is still running")
	}
	if len(f.reclaims) != 2 {
		t.Fatalf("reclaims = %v, want both dead sessions", f.reclaims)
	}
	if !running(other.pid) {
		t.Fatal("a process that only reuses a recorded pid was signalled")
	}
	for _, n := range []string{"a", "b"} {
		if a := action(t, s, n); a.Last == nil || !a.Last.OK || f.triesOf(n) != 1 {
			t.Errorf("%s: last %+v, %d tries; want rerun once, ok", n, a.Last, f.triesOf(n))
		}
	}
}

// A pid whose start time does not match is never signalled.
func TestStopOrphanSparesReusedPID(t *testing.T) {
	p := startGroupLeader(t)
	if err := stopOrphan(hclog.NewNullLogger(), p.pid, p.start+1); err != nil {
		t.Fatal(err)
	}
	if !running(p.pid) {
		t.Fatal("a process whose start time differs was stopped")
	}
}

// groupLeader is a `sleep 60` that leads its own process group, as a
// worker's command does: its pid, its start time and a channel closed once
// it has exited and been reaped. The test's cleanup kills it.
type groupLeader struct {
	pid    int
	start  uint64
	exited chan struct{}
}

func startGroupLeader(t *testing.T) groupLeader {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := groupLeader{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-g.exited })
	var err error
	if g.start, err = processStartTime(g.pid); err != nil {
		t.Fatal(err)
	}
	return g
}

// running reports whether pid is a live process: not gone, and not a
// zombie (which still answers kill -0, so that a test checking with it
// could not tell a killed process from a live one).
func running(pid int) bool {
	f, err := procStat(pid)
	return err == nil && len(f) > 0 && f[0] != "Z"
}

// A predecessor that died holding the lock before its command's pid was
// recorded may have left a command running that nothing can name: its lock
// is left to expire with its session, never given back early.
func TestRecoverLeavesUnnamedCommandsLockAlone(t *testing.T) {
	s := newStore(t, 3, "waiting", "holding")
	err := s.Update(func(st *state.State) error {
		for _, n := range []string{"waiting", "holding"} {
			if _, _, err := st.Begin(n); err != nil {
				return err
			}
			st.RecordSession(n, "dead-"+n)
		}
		st.Acquired("holding")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f := newFake(ok)
	w := startWorker(t, Options{Store: s, Runner: f})
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(f.reclaims) != 1 || !strings.Contains(f.reclaims[0], "dead-waiting") {
		t.Fatalf("reclaims = %v, want only the session that never held the lock", f.reclaims)
	}
}

// Once the command's first process is gone (the parent-death signal kills
// it with its worker), what it left in its process group is stopped.
func TestStopOrphanStopsLeftoversOfADeadLeader(t *testing.T) {
	sh := exec.Command("/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!")
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := sh.Output() // reaps the leader: only the sleep is left
	if err != nil {
		t.Fatal(err)
	}
	left, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(left, syscall.SIGKILL) })
	if err := stopOrphan(hclog.NewNullLogger(), sh.Process.Pid, 12345); err != nil {
		t.Fatal(err)
	}
	if f, err := procStat(left); err == nil && f[0] != "Z" {
		t.Fatalf("the leftover %d of the dead command still runs (state %s)", left, f[0])
	}
}
