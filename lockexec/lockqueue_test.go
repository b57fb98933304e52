package lockexec_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
)

// queueKeys lists every key in the queue of the lock at prefix, live or
// left behind.
func queueKeys(t *testing.T, c *api.Client, prefix string) api.KVPairs {
	t.Helper()
	pairs, _, err := c.KV().List(prefix+"/"+lockexec.QueueDir, nil)
	if err != nil {
		t.Fatalf("listing the queue of %s: %v", prefix, err)
	}
	return pairs
}

// waitQueued waits until n waiters hold a queue key at prefix. A waiter's
// place is its queue key's, written after its session: waiting for the
// sessions alone would let a later waiter's key overtake an earlier one's
// on a busy machine.
func waitQueued(t *testing.T, c *api.Client, prefix string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d queue keys", n), 10*time.Second, func() bool {
		got := 0
		for _, p := range queueKeys(t, c, prefix) {
			if p.Session != "" {
				got++
			}
		}
		return got == n
	})
}

// assertQueueLeft checks that the queue at prefix holds exactly the keys
// named, nothing left behind.
func assertQueueLeft(t *testing.T, c *api.Client, prefix string, keys ...string) {
	t.Helper()
	var got []string
	for _, p := range queueKeys(t, c, prefix) {
		got = append(got, p.Key)
	}
	if strings.Join(got, " ") != strings.Join(keys, " ") {
		t.Errorf("queue keys left at %s: %q, want %q", prefix, got, keys)
	}
}

// fakeWaiter queues a waiter by hand: a queue key held by a session of the
// test's own, renewed until the test ends. It returns the session and the
// key.
func fakeWaiter(t *testing.T, c *api.Client, prefix string) (session, key string) {
	t.Helper()
	id, _, err := c.Session().Create(&api.SessionEntry{Name: "test waiter", TTL: "10s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Session().RenewPeriodic("10s", id, nil, done) }()
	key = prefix + "/" + lockexec.QueueDir + id
	t.Cleanup(func() {
		close(done)
		_, _ = c.Session().Destroy(id, nil)
		_, _ = c.KV().Delete(key, nil)
	})
	ok, _, err := c.KV().Acquire(&api.KVPair{Key: key, Session: id, Flags: lockexec.QueueFlagValue}, nil)
	if err != nil || !ok {
		t.Fatalf("writing the fake waiter's queue key: %v, %v", ok, err)
	}
	return id, key
}

// TestLockQueueFIFO: waiters queued one after the other behind a held lock
// get it in that order.
func TestLockQueueFIFO(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	release := holdAll(t, client, prefix, 1)
	order := filepath.Join(t.TempDir(), "order")
	const waiters = 5

	var runs []*bgRun
	for i := range waiters {
		runs = append(runs, startRun(t, context.Background(), r, shellOpts(t, prefix, 1, fmt.Sprintf("echo %d >> %s", i, order))))
		waitQueued(t, client, prefix, i+1)
	}
	time.Sleep(300 * time.Millisecond)
	release()
	for i, run := range runs {
		if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
			t.Fatalf("waiter %d: %v, exit %d", i, err, res.ExitCode)
		}
	}
	data, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(data)), "0 1 2 3 4"; strings.Join(got, " ") != want {
		t.Errorf("the waiters ran in the order %v, want %s", got, want)
	}
	assertClean(t, client, prefix)
}

// TestLockQueueNoHerd: with several waiters behind a held lock, each
// release is contended for by the front waiter alone, not by all of them
// at once (a write each, all but one failing).
func TestLockQueueNoHerd(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	release := holdAll(t, client, prefix, 1)
	const waiters = 8

	var log syncBuffer
	var runs []*bgRun
	for i := range waiters {
		opts := shellOpts(t, prefix, 1, "sleep 0.05")
		opts.Logger = hclog.New(&hclog.LoggerOptions{Name: fmt.Sprint(i), Level: hclog.Debug, Output: &log})
		runs = append(runs, startRun(t, context.Background(), r, opts))
		waitQueued(t, client, prefix, i+1)
	}
	time.Sleep(300 * time.Millisecond)
	release()
	for i, run := range runs {
		if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
			t.Fatalf("waiter %d: %v, exit %d", i, err, res.ExitCode)
		}
	}
	// One attempt per waiter; a herd makes it up to waiters*(waiters+1)/2.
	attempts := strings.Count(log.String(), "taking the lock")
	t.Logf("%d attempts to take the lock for %d waiters", attempts, waiters)
	if attempts > waiters+waiters/2 {
		t.Errorf("%d attempts to take the lock for %d waiters: they contend as a herd", attempts, waiters)
	}
	assertClean(t, client, prefix)
}

// TestLockQueueStuckWaiterAhead: a waiter ahead whose session lives on but
// which never takes the lock does not keep the next one from it for more
// than a few seconds once the lock is free, and it is taken out of the
// queue.
func TestLockQueueStuckWaiterAhead(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	fakeWaiter(t, client, prefix)
	// Held while our run arrives, so that it queues (a free lock is
	// taken at once, queue or not).
	release := holdAll(t, client, prefix, 1)

	dir := t.TempDir()
	opts := shellOpts(t, prefix, 1, "touch "+dir+"/ran")
	opts.Try = time.Minute
	run := startRun(t, context.Background(), lockexec.New(client), opts)
	waitQueued(t, client, prefix, 2)
	start := time.Now()
	release()
	if res, err := run.wait(t, 2*time.Minute); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run behind a stuck waiter: %v, exit %d", err, res.ExitCode)
	}
	took := time.Since(start)
	t.Logf("the lock was taken %s after its release, behind a stuck waiter", took)
	if took < time.Second {
		// It did not wait for the waiter ahead at all.
		t.Errorf("the lock was taken %s after its release, without waiting for the waiter ahead", took)
	}
	if took > 30*time.Second {
		t.Errorf("the stuck waiter ahead held up the next one for %s", took)
	}
	if !fileExists(dir + "/ran") {
		t.Error("the command did not run")
	}
	// Its key is gone, so that the next waiters do not each wait for it.
	assertClean(t, client, prefix)
}

// TestLockQueueWaiterLeaves: a waiter that gives up (-try, or its context
// cancelled) deletes its queue key; a waiter that died (its session
// destroyed) leaves one without a session, which the waiter behind it
// neither waits for nor leaves behind.
func TestLockQueueWaiterLeaves(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	release := holdAll(t, client, prefix, 1)

	// A dead waiter's key comes first, then one of ours.
	dead, _ := fakeWaiter(t, client, prefix)
	dir := t.TempDir()
	first := startRun(t, context.Background(), r, shellOpts(t, prefix, 1, "touch "+dir+"/first"))
	waitQueued(t, client, prefix, 2)

	// Two more give up while queued behind them.
	opts := shellOpts(t, prefix, 1, "touch "+dir+"/try")
	opts.Try = 2 * time.Second
	if _, err := r.Run(context.Background(), opts); !errors.Is(err, lockexec.ErrNotAcquired) {
		t.Fatalf("Run with -try behind a held lock: %v, want ErrNotAcquired", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := startRun(t, ctx, r, shellOpts(t, prefix, 1, "touch "+dir+"/cancelled"))
	waitQueued(t, client, prefix, 3)
	cancel()
	if _, err := cancelled.wait(t, 30*time.Second); !errors.Is(err, lockexec.ErrInterrupted) {
		t.Fatalf("cancelled Run: %v, want ErrInterrupted", err)
	}
	waitQueued(t, client, prefix, 2)
	if n := len(queueKeys(t, client, prefix)); n != 2 {
		t.Errorf("%d queue keys, want the dead waiter's and the first's: the waiters that gave up left theirs", n)
	}

	// The dead waiter: its key loses its session, and goes.
	if _, err := client.Session().Destroy(dead, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead waiter's key to go", 10*time.Second, func() bool { return len(queueKeys(t, client, prefix)) == 1 })
	release()
	if res, err := first.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
		t.Fatalf("the waiter behind the dead one: %v, exit %d", err, res.ExitCode)
	}
	if fileExists(dir+"/try") || fileExists(dir+"/cancelled") {
		t.Error("a waiter that gave up ran its command")
	}
	assertClean(t, client, prefix)
}

// TestReclaimDeletesQueueKey: Reclaim of a run that died waiting for the
// lock deletes its queue key, which the session's destruction alone would
// leave behind.
func TestReclaimDeletesQueueKey(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	session, _ := fakeWaiter(t, client, prefix)
	if err := lockexec.New(client).Reclaim(context.Background(), prefix, 1, session); err != nil {
		t.Fatalf("Reclaim: %v", err)
	}
	assertQueueLeft(t, client, prefix)
}

// TestLockQueueWithAPILockWaiter: `consul lock` (api.Lock), which does not
// queue, waits on the same prefix among our queued waiters: it gets the
// lock in the end too, and nobody ever holds it along with anyone else.
func TestLockQueueWithAPILockWaiter(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	release := holdAll(t, client, prefix, 1)
	held := filepath.Join(t.TempDir(), "held")
	// Fails if anyone else holds the lock meanwhile.
	script := fmt.Sprintf("mkdir %[1]s || exit 9; sleep 0.05; rmdir %[1]s", held)

	var runs []*bgRun
	queue := func(n int) {
		for range n {
			runs = append(runs, startRun(t, context.Background(), r, shellOpts(t, prefix, 1, script)))
			waitQueued(t, client, prefix, len(runs))
		}
	}
	queue(3)
	l, err := client.LockOpts(&api.LockOptions{Key: prefix + "/" + lockexec.LockKeySuffix, SessionName: "test api waiter"})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	apiDone := make(chan error, 1)
	go func() {
		lost, err := l.Lock(stop)
		switch {
		case err != nil:
		case lost == nil:
			err = errors.New("stopped before it got the lock")
		default:
			if err = os.Mkdir(held, 0o700); err == nil {
				time.Sleep(50 * time.Millisecond)
				err = os.Remove(held)
			}
			if uerr := l.Unlock(); err == nil {
				err = uerr
			}
		}
		apiDone <- err
	}()
	time.Sleep(300 * time.Millisecond)
	queue(2)
	release()

	for i, run := range runs {
		if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
			t.Errorf("waiter %d: %v, exit %d (9: the lock was held by another)", i, err, res.ExitCode)
		}
	}
	select {
	case err := <-apiDone:
		if err != nil {
			t.Errorf("the api.Lock waiter: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the api.Lock waiter did not get the lock")
	}
	_ = l.Destroy()
	assertClean(t, client, prefix)
}

// TestLockFreeTakenWithoutQueue: a run that finds the lock free takes it
// without writing a queue key: nobody waits, so a queue would only cost a
// write, a list and a delete.
func TestLockFreeTakenWithoutQueue(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	var log syncBuffer
	opts := shellOpts(t, prefix, 1, "true")
	opts.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &log})
	if res, err := lockexec.New(client).Run(context.Background(), opts); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: %v, exit %d", err, res.ExitCode)
	}
	if strings.Contains(log.String(), "queued for the lock") {
		t.Errorf("a run that found the lock free queued for it:\n%s", log.String())
	}
	assertClean(t, client, prefix)
}
