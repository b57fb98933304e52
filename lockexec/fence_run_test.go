package lockexec_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

// freeze stops the agent's process with SIGSTOP, as a hung agent or a
// stalled VM would be, until thaw. The test's end thaws it in any case, so
// that it can be stopped.
func freeze(t *testing.T, a *devconsul.Agent) (thaw func()) {
	t.Helper()
	pid := a.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("freezing the agent: %v", err)
	}
	var thawed atomic.Bool
	thaw = func() {
		if thawed.CompareAndSwap(false, true) {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	return thaw
}

// TestRunFrozenAgentStopsCommand freezes the holder's agent under a running
// command. The holder can no longer confirm its session, and the servers
// (here the frozen agent itself; on a cluster, the others) may have
// invalidated it: somebody else may acquire from the last confirmation plus
// the lock delay on. The command must be dead before then.
func TestRunFrozenAgentStopsCommand(t *testing.T) {
	t.Parallel()
	own, client := ownAgent(t)
	dir := t.TempDir()
	opts := shellOpts(t, uniquePrefix(t), 1, markerScript(dir))
	var pid atomic.Int64
	opts.OnStarted = func(p int) { pid.Store(int64(p)) }
	run := startRun(t, context.Background(), lockexec.New(client), opts)
	run.waitStarted(t, markerPath(dir, "started"))

	thaw := freeze(t, own)
	frozen := time.Now()
	// The last confirmation came before the freeze, so the lock may be
	// free from frozen + DefaultLockDelay at the earliest.
	mayBeFree := frozen.Add(lockexec.DefaultLockDelay)
	child := strconv.FormatInt(pid.Load(), 10)
	waitFor(t, "the command to be stopped", lockexec.DefaultLockDelay+20*time.Second, func() bool {
		return processGone(child)
	})
	stopped := time.Now()
	t.Logf("the command was stopped %s after the freeze", stopped.Sub(frozen).Round(time.Millisecond))
	if stopped.After(mayBeFree) {
		t.Errorf("the command ran until %s after the freeze, past the lock delay of %s",
			stopped.Sub(frozen), lockexec.DefaultLockDelay)
	}
	if !fileExists(markerPath(dir, "term")) {
		t.Error("the command was not sent SIGTERM first")
	}
	assertBackgroundGone(t, dir)

	thaw()
	res, err := run.wait(t, 60*time.Second)
	if !errors.Is(err, lockexec.ErrLockLost) || !strings.Contains(err.Error(), "confirm") {
		t.Fatalf("Run: %v, want ErrLockLost for a session it could not confirm", err)
	}
	if res.ExitCode != 143 {
		t.Errorf("ExitCode=%d, want 143", res.ExitCode)
	}
}

// TestRunShortFreezeKeepsLock freezes the holder's agent for less than the
// monitor-retry window: that must cost nothing, and the command runs to
// its end under the lock.
func TestRunShortFreezeKeepsLock(t *testing.T) {
	t.Parallel()
	own, client := ownAgent(t)
	dir := t.TempDir()
	prefix := uniquePrefix(t)
	opts := shellOpts(t, prefix, 1,
		fmt.Sprintf(`touch %[1]s/started; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir))
	opts.MonitorRetries = lockexec.DefaultMonitorRetries
	run := startRun(t, context.Background(), lockexec.New(client), opts)
	run.waitStarted(t, dir+"/started")

	window := time.Duration(lockexec.DefaultMonitorRetries) * lockexec.DefaultMonitorRetryTime
	thaw := freeze(t, own)
	frozen := time.Now()
	time.Sleep(window - 500*time.Millisecond)
	thaw()
	// Past the moment the fence would have fired had it not confirmed the
	// session again since the freeze.
	time.Sleep(time.Until(frozen.Add(lockexec.DefaultLockDelay)))
	select {
	case <-run.done:
		t.Fatalf("Run returned after a short freeze: %+v, %v", run.res, run.err)
	default:
	}
	if err := os.WriteFile(dir+"/go", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := run.wait(t, 30*time.Second)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: exit %d, %v; want the command to finish under the lock", res.ExitCode, err)
	}
	assertClean(t, client, prefix)
}

// flakyConsul is a proxy in front of the agent that answers requests whose
// path starts with prefix with Consul's transient errors while failing is
// set.
func flakyConsul(t *testing.T, addr, prefix string) (*api.Client, *atomic.Bool) {
	t.Helper()
	target, err := url.Parse("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	// Requests cancelled when a run ends are no news.
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	var failing atomic.Bool
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() && strings.HasPrefix(r.URL.Path, prefix) {
			// The answers a leader election gives, in turn.
			switch n.Add(1) % 3 {
			case 0:
				http.Error(w, "No cluster leader", http.StatusInternalServerError)
			case 1:
				http.Error(w, "rpc error making call: dial tcp 127.0.0.1:8300: connect: connection refused", http.StatusInternalServerError)
			default:
				http.Error(w, "Your IP is issuing too many concurrent connections", http.StatusTooManyRequests)
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return clientFor(t, srv.Listener.Addr().String()), &failing
}

// TestRunWaitsThroughConsulErrors has Consul answer a waiter with 500s and
// 429s for a while, as during a leader election, just as the lock frees: the
// waiter must ride them out and run its command once Consul is back.
func TestRunWaitsThroughConsulErrors(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			release := holdUntil(t, client, prefix, limit, limit)
			flaky, failing := flakyConsul(t, agent.Addr(), "/v1/kv/")
			dir := t.TempDir()
			opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
			opts.Try = time.Minute
			run := startRun(t, context.Background(), lockexec.New(flaky), opts)
			waitOurSession(t, client, prefix)

			failing.Store(true)
			release()
			time.Sleep(3 * time.Second)
			select {
			case <-run.done:
				t.Fatalf("Run gave up while Consul was failing: %+v, %v", run.res, run.err)
			default:
			}
			failing.Store(false)
			res, err := run.wait(t, 30*time.Second)
			if err != nil || res.ExitCode != 0 || !fileExists(dir+"/ran") {
				t.Fatalf("Run: exit %d, %v; want the command run once Consul is back", res.ExitCode, err)
			}
			assertClean(t, client, prefix)
		})
	}
}

// TestRunCreatesSessionThroughConsulErrors has Consul refuse to create the
// session for a while, as during a leader election: the run must retry
// within -try, and still run its command.
func TestRunCreatesSessionThroughConsulErrors(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	flaky, failing := flakyConsul(t, agent.Addr(), "/v1/session/create")
	failing.Store(true)
	dir := t.TempDir()
	opts := shellOpts(t, prefix, 1, "touch "+dir+"/ran")
	opts.Try = time.Minute
	run := startRun(t, context.Background(), lockexec.New(flaky), opts)
	time.Sleep(2 * time.Second)
	select {
	case <-run.done:
		t.Fatalf("Run gave up while Consul was failing: %+v, %v", run.res, run.err)
	default:
	}
	failing.Store(false)
	res, err := run.wait(t, 30*time.Second)
	if err != nil || res.ExitCode != 0 || !fileExists(dir+"/ran") {
		t.Fatalf("Run: exit %d, %v; want the command run once Consul is back", res.ExitCode, err)
	}
	assertClean(t, client, prefix)

	// Within -try only.
	failing.Store(true)
	opts.Try = time.Second
	start := time.Now()
	_, err = lockexec.New(flaky).Run(context.Background(), opts)
	if !errors.Is(err, lockexec.ErrConsulUnreachable) {
		t.Fatalf("Run: %v, want ErrConsulUnreachable once -try ran out", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run gave up after %s with -try 1s", took)
	}
}

// TestAcquireLease takes a lease without a command: its context stays live
// while held, is cancelled with ErrLockLost when the session goes, and with
// something else on Release.
func TestAcquireLease(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			opts := lockexec.Options{Prefix: prefix, Limit: limit, Logger: testLogger(t)}

			lease, err := r.Acquire(context.Background(), opts)
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			holders, err := r.Holders(prefix, nil)
			if err != nil || len(holders) != 1 || holders[0].Session != lease.Session() {
				t.Fatalf("holders %+v, %v; want the lease's session %s", holders, err, lease.Session())
			}
			if err := lease.Release(); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if cause := context.Cause(lease.Context()); cause == nil || errors.Is(cause, lockexec.ErrLockLost) {
				t.Errorf("after Release the context's cause is %v, want a release", cause)
			}
			assertClean(t, client, prefix)

			lease, err = r.Acquire(context.Background(), opts)
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			defer lease.Release()
			time.Sleep(100 * time.Millisecond)
			if err := lease.Context().Err(); err != nil {
				t.Fatalf("the lease's context is done while held: %v", context.Cause(lease.Context()))
			}
			if _, err := client.Session().Destroy(lease.Session(), nil); err != nil {
				t.Fatal(err)
			}
			select {
			case <-lease.Context().Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the lease's context is not done 10s after its session was destroyed")
			}
			if cause := context.Cause(lease.Context()); !errors.Is(cause, lockexec.ErrLockLost) {
				t.Errorf("cause %v, want ErrLockLost", cause)
			}
		})
	}
}

// TestRunHooks checks OnSession (called with a live session before the
// wait) and OnStarted (called with the command's pid, its group's leader).
func TestRunHooks(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	release := holdUntil(t, client, prefix, 1, 1)
	var session string
	var pid int
	opts := shellOpts(t, prefix, 1, "sleep 0.1")
	opts.OnSession = func(id string) {
		session = id
		s, _, err := client.Session().Info(id, nil)
		if err != nil || s == nil {
			t.Errorf("OnSession(%q): no such session: %v", id, err)
		}
		release()
	}
	opts.OnStarted = func(p int) {
		pid = p
		if pgid, err := syscall.Getpgid(p); err != nil || pgid != p {
			t.Errorf("OnStarted(%d): process group %d, %v; want its own", p, pgid, err)
		}
	}
	res, err := lockexec.New(client).Run(context.Background(), opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if session == "" || session != res.Session {
		t.Errorf("OnSession got %q, Result.Session is %q", session, res.Session)
	}
	if pid <= 0 {
		t.Errorf("OnStarted got pid %d", pid)
	}
}

// TestHoldersFrozenAgent asks for the holders of a prefix while the agent
// is frozen: the answer must be an error after the request's deadline, not
// a hang.
func TestHoldersFrozenAgent(t *testing.T) {
	t.Parallel()
	own, client := ownAgent(t)
	freeze(t, own)
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := lockexec.New(client).Holders("frozen", nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Holders succeeded against a frozen agent")
		}
		t.Logf("Holders failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(60 * time.Second):
		t.Fatal("Holders still hangs 60s after the agent froze")
	}
}

// TestRunHoldsThroughConsulErrors has Consul answer every request with the
// errors of a leader election for a few seconds while the command runs:
// renewals and the monitor's reads fail, and the holder must ride it out.
func TestRunHoldsThroughConsulErrors(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			flaky, failing := flakyConsul(t, agent.Addr(), "/v1/")
			dir := t.TempDir()
			opts := shellOpts(t, prefix, limit,
				fmt.Sprintf(`touch %[1]s/started; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir))
			opts.MonitorRetries = lockexec.DefaultMonitorRetries
			run := startRun(t, context.Background(), lockexec.New(flaky), opts)
			run.waitStarted(t, dir+"/started")

			failing.Store(true)
			// Wake the monitor's blocking read, so that its next read fails:
			// another holder takes the free slot, or the lock's key is
			// rewritten (Consul keeps its session).
			time.Sleep(100 * time.Millisecond)
			releaseOther := func() {}
			if limit > 1 {
				releaseOther = holdUntil(t, client, prefix, limit, 1)
			} else if _, err := client.KV().Put(&api.KVPair{Key: prefix + "/" + lockexec.LockKeySuffix, Flags: api.LockFlagValue}, nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(4 * time.Second)
			failing.Store(false)
			time.Sleep(lockexec.DefaultLockDelay - 4*time.Second)
			select {
			case <-run.done:
				t.Fatalf("Run returned while Consul was failing: %+v, %v", run.res, run.err)
			default:
			}
			if err := os.WriteFile(dir+"/go", nil, 0o600); err != nil {
				t.Fatal(err)
			}
			res, err := run.wait(t, 30*time.Second)
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("Run: exit %d, %v; want the command to finish under the lock", res.ExitCode, err)
			}
			releaseOther()
			assertClean(t, client, prefix)
		})
	}
}

// holdUntil takes n slots of prefix (the lock when limit is 1) with the
// api's own sessions until release is called or the test ends.
func holdUntil(t *testing.T, c *api.Client, prefix string, limit, n int) (release func()) {
	t.Helper()
	releases := holdSlots(t, c, prefix, limit, n)
	return func() {
		for _, r := range releases {
			r()
		}
	}
}
