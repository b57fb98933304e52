package lockexec_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

// agent is the dev agent shared by the package's tests; nil when there is
// no consul binary outside CI, in which case the tests that need it skip.
var agent *devconsul.Agent

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// A helper process started by a test: it brings its own agent's
		// address and needs none of ours.
		os.Exit(m.Run())
	}
	os.Exit(devconsul.RunPackage(m, &agent))
}

// testClient returns a client for the shared agent, skipping the test when
// there is none.
func testClient(t *testing.T) *api.Client {
	t.Helper()
	return devconsul.SharedClient(t, agent)
}

// ownAgent starts a dev agent for a test that stops it.
func ownAgent(t *testing.T) (*devconsul.Agent, *api.Client) {
	t.Helper()
	if agent == nil {
		t.Skip("skipping: no consul binary (see devconsul.ErrNoBinary)")
	}
	a, err := devconsul.Start(devconsul.Options{})
	if err != nil {
		t.Fatalf("starting consul: %v", err)
	}
	t.Cleanup(a.Stop)
	c, err := a.Client()
	if err != nil {
		t.Fatal(err)
	}
	return a, c
}

var prefixSeq atomic.Int64

// uniquePrefix gives each test (and each -count repetition) a prefix of its
// own, so that tests sharing the agent cannot see each other's locks.
func uniquePrefix(t *testing.T) string {
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	return fmt.Sprintf("lockexec-test/%s-%d-%d", name, time.Now().UnixNano()%1e6, prefixSeq.Add(1))
}

// testLogger sends Run's log lines to the test log, at debug level so that
// every line is exercised.
func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   "lockexec",
		Level:  hclog.Debug,
		Output: testWriter{t},
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a child's
// stdout and our reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shellOpts is the usual options for a test: a shell command on prefix,
// logging to the test.
func shellOpts(t *testing.T, prefix string, limit int, script string) lockexec.Options {
	return lockexec.Options{
		Prefix:  prefix,
		Limit:   limit,
		Command: []string{script},
		Shell:   true,
		Logger:  testLogger(t),
	}
}

// bgRun is a Run going on in the background.
type bgRun struct {
	done     chan struct{}
	res      lockexec.Result
	err      error
	returned time.Time
}

// startRun starts r.Run in the background. When the test ends the run is
// cancelled and waited for, so that it never outlives its test.
func startRun(t *testing.T, ctx context.Context, r *lockexec.Runner, opts lockexec.Options) *bgRun {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	b := &bgRun{done: make(chan struct{})}
	go func() {
		b.res, b.err = r.Run(ctx, opts)
		b.returned = time.Now()
		close(b.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			t.Errorf("a background Run did not return after being cancelled")
		}
	})
	return b
}

// waitStarted waits for the command to create path, failing the test
// with Run's own error if Run returns first.
func (b *bgRun) waitStarted(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !fileExists(path) {
		select {
		case <-b.done:
			t.Fatalf("Run returned before the command started: %+v, %v", b.res, b.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command did not start within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait waits for the run to return, failing the test after timeout.
func (b *bgRun) wait(t *testing.T, timeout time.Duration) (lockexec.Result, error) {
	t.Helper()
	select {
	case <-b.done:
		return b.res, b.err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %s", timeout)
		return lockexec.Result{}, nil
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// ourSessions lists the sessions Run created for prefix (by their default
// name), excluding the test's own holders.
func ourSessions(t *testing.T, c *api.Client, prefix string) []*api.SessionEntry {
	t.Helper()
	all, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatalf("listing sessions: %v", err)
	}
	var ours []*api.SessionEntry
	for _, s := range all {
		if s.Name == "ct-supervise "+prefix {
			ours = append(ours, s)
		}
	}
	return ours
}

// waitContenders waits until n contender keys of the semaphore at prefix
// exist. A waiter's place in the queue is its contender key's, written
// after its session: waiting for the sessions alone would let a later
// waiter's key overtake an earlier one's on a busy machine.
func waitContenders(t *testing.T, c *api.Client, prefix string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d contender keys", n), 10*time.Second, func() bool {
		pairs, _, err := c.KV().List(prefix+"/", nil)
		if err != nil {
			t.Fatalf("listing %s: %v", prefix, err)
		}
		got := 0
		for _, p := range pairs {
			if p.Session != "" && p.Key == prefix+"/"+p.Session {
				got++
			}
		}
		return got == n
	})
}

// waitOurSession waits until Run has created its session for prefix and
// returns its ID.
func waitOurSession(t *testing.T, c *api.Client, prefix string) string {
	t.Helper()
	var id string
	waitFor(t, "the run's session", 10*time.Second, func() bool {
		if s := ourSessions(t, c, prefix); len(s) > 0 {
			id = s[0].ID
			return true
		}
		return false
	})
	return id
}

// assertNoSessions checks that no session of ours is left for prefix.
func assertNoSessions(t *testing.T, c *api.Client, prefix string) {
	t.Helper()
	if s := ourSessions(t, c, prefix); len(s) != 0 {
		t.Errorf("%d session(s) left behind for %q, first %s", len(s), prefix, s[0].ID)
	}
}

// assertNoHolder checks that the lock key at prefix is gone or held by
// nobody (a lock without a session, a semaphore without holders).
func assertNoHolder(t *testing.T, c *api.Client, prefix string) {
	t.Helper()
	pair, _, err := c.KV().Get(prefix+"/"+lockexec.LockKeySuffix, nil)
	if err != nil {
		t.Fatalf("reading the lock key: %v", err)
	}
	if pair == nil {
		return
	}
	switch pair.Flags {
	case api.LockFlagValue:
		if pair.Session != "" {
			t.Errorf("lock %q still held by session %s", prefix, pair.Session)
		}
	case api.SemaphoreFlagValue:
		var v struct{ Holders map[string]bool }
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			t.Fatalf("decoding the semaphore: %v", err)
		}
		if len(v.Holders) != 0 {
			t.Errorf("semaphore %q still has holders %v", prefix, v.Holders)
		}
	default:
		t.Errorf("lock key of %q has unexpected flags %#x", prefix, pair.Flags)
	}
}

// assertClean is assertNoSessions and assertNoHolder, and checks that no
// waiter left its queue key behind.
func assertClean(t *testing.T, c *api.Client, prefix string) {
	t.Helper()
	assertNoSessions(t, c, prefix)
	assertNoHolder(t, c, prefix)
	assertQueueLeft(t, c, prefix)
}

// markerScript is a shell script that records the signals it receives in
// dir and otherwise waits a long time. "started" appears once it runs. A
// long sleep left in the background, its pid in "bgpid", shows whether a
// stopped command's leftovers are killed.
func markerScript(dir string) string {
	return fmt.Sprintf(`trap 'echo term > %[1]s/term; exit 143' TERM; trap 'echo int > %[1]s/int; exit 130' INT; `+
		`trap 'echo hup > %[1]s/hup; exit 0' HUP; sleep 30 & echo $! > %[1]s/bgpid; touch %[1]s/started; `+
		// Not `wait`: a signal landing between touch and wait can be left
		// pending by the shell until the background sleep ends. A short
		// foreground sleep in a loop runs the trap within 0.1s whatever.
		`while :; do sleep 0.1; done`, dir)
}

func markerPath(dir, name string) string { return filepath.Join(dir, name) }

// processGone reports whether the process pid has exited. An orphan may
// linger as a zombie if nothing reaps it; that is dead enough.
func processGone(pid string) bool {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

// assertBackgroundGone checks that the background sleep of markerScript in
// dir goes away: a stopped command must not leave anything of itself
// running once the lock is given back. SIGKILL takes effect when the
// process is next scheduled, so a loaded machine gets a moment.
func assertBackgroundGone(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile(markerPath(dir, "bgpid"))
	if err != nil {
		t.Fatalf("reading the background pid: %v", err)
	}
	pid := strings.TrimSpace(string(data))
	gone := func() bool { return processGone(pid) }
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skipf("cannot read /proc: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone() {
		if time.Now().After(deadline) {
			t.Errorf("the command's background process %s is still running after Run returned", pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdSlots takes n slots of prefix (the lock when limit is 1) with the
// api's own sessions, the way other nodes would, and returns a func per
// slot that gives it back. Each may be called more than once, from any
// goroutine; whatever is still held is given back when the test ends.
func holdSlots(t *testing.T, c *api.Client, prefix string, limit, n int) []func() {
	t.Helper()
	releases := make([]func(), 0, n)
	for range n {
		var giveBack func() error
		if limit == 1 {
			l, err := c.LockOpts(&api.LockOptions{Key: prefix + "/" + lockexec.LockKeySuffix, SessionName: "test holder"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Lock(nil); err != nil {
				t.Fatalf("holding the lock elsewhere: %v", err)
			}
			giveBack = l.Unlock
		} else {
			s, err := c.SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: limit, SessionName: "test holder"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Acquire(nil); err != nil {
				t.Fatalf("holding a semaphore slot elsewhere: %v", err)
			}
			giveBack = s.Release
		}
		var once sync.Once
		release := func() { once.Do(func() { _ = giveBack() }) }
		t.Cleanup(release)
		releases = append(releases, release)
	}
	return releases
}

// holdElsewhere takes every slot of prefix (the lock when limit is 1) with
// the api's own sessions, the way another node would, until the test ends.
func holdElsewhere(t *testing.T, c *api.Client, prefix string, limit int) {
	t.Helper()
	holdSlots(t, c, prefix, limit, limit)
}
