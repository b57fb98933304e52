package lockexec_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/lockexec"
)

// TestBeforeTakeOnceTheLockIsFree holds the lock (every slot of the
// semaphore) elsewhere, then lets one go: BeforeTake must not be called
// while nothing is free, must be called after the release and before our
// take (the lock key does not list us yet when it runs), and at least once
// before the command starts.
func TestBeforeTakeOnceTheLockIsFree(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			client := testClient(t)
			prefix := uniquePrefix(t)
			release := holdAll(t, client, prefix, limit)

			var (
				mu       sync.Mutex
				released bool
				session  string
				calls    []string // what the lock key looked like at each call
			)
			dir := t.TempDir()
			opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
			opts.OnSession = func(id string) {
				mu.Lock()
				defer mu.Unlock()
				session = id
			}
			opts.BeforeTake = func() {
				// A read here would not do in real use (the hook must not
				// block); it lets the test see where the waiter stands.
				mu.Lock()
				defer mu.Unlock()
				calls = append(calls, describeLockKey(client, prefix, session, released))
			}
			var atStart int
			opts.OnAcquired = func() {
				mu.Lock()
				defer mu.Unlock()
				atStart = len(calls)
			}
			run := startRun(t, context.Background(), lockexec.New(client), opts)
			waitOurSession(t, client, prefix)
			time.Sleep(500 * time.Millisecond) // the waiter blocks on the held lock
			mu.Lock()
			if len(calls) != 0 {
				t.Errorf("BeforeTake was called while nothing was free: %v", calls)
			}
			released = true
			mu.Unlock()
			release()

			if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
				t.Fatalf("Run = %v, exit %d", err, res.ExitCode)
			}
			mu.Lock()
			defer mu.Unlock()
			if atStart == 0 {
				t.Fatal("BeforeTake was not called before the command started")
			}
			for i, c := range calls {
				if c != "free" {
					t.Errorf("BeforeTake call %d: %s", i+1, c)
				}
			}
		})
	}
}

// describeLockKey says "free" when the lock key has room for session and
// does not list it yet, and what is wrong otherwise.
func describeLockKey(c *api.Client, prefix, session string, released bool) string {
	if !released {
		return "called before the holder released"
	}
	pair, _, err := c.KV().Get(prefix+"/"+lockexec.LockKeySuffix, nil)
	if err != nil {
		return "reading the lock key: " + err.Error()
	}
	if pair == nil {
		return "free"
	}
	switch pair.Flags {
	case api.LockFlagValue:
		switch pair.Session {
		case "":
			return "free"
		case session:
			return "called after we took the lock"
		}
		return "called while another session held the lock"
	case api.SemaphoreFlagValue:
		var v struct {
			Limit   int
			Holders map[string]bool
		}
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			return "decoding the semaphore: " + err.Error()
		}
		switch {
		case v.Holders[session]:
			return "called after we took a slot"
		case len(v.Holders) >= v.Limit:
			return fmt.Sprintf("called while all %d slots were held", v.Limit)
		}
		return "free"
	}
	return fmt.Sprintf("lock key with flags %#x", pair.Flags)
}

// TestBeforeTakeAfterHandOff: a semaphore waiter handed a slot by one of
// ours takes nothing, yet BeforeTake must still be called after that
// hand-off, before the command: a read started by an earlier call (a take
// that failed) would have come before the release, and miss a halt the
// releasing node recorded.
func TestBeforeTakeAfterHandOff(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const limit = 2
	var holders []*lockexec.Lease
	for range limit {
		lease, err := r.Acquire(context.Background(), lockexec.Options{Prefix: prefix, Limit: limit, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		holders = append(holders, lease)
	}
	t.Cleanup(func() {
		for _, l := range holders {
			_ = l.Release()
		}
	})

	var (
		mu       sync.Mutex
		released bool
		calls    []bool // whether each call came after the release
		atStart  = -1
	)
	dir := t.TempDir()
	opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
	opts.BeforeTake = func() {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, released)
	}
	opts.OnAcquired = func() {
		mu.Lock()
		defer mu.Unlock()
		atStart = len(calls)
	}
	run := startRun(t, context.Background(), r, opts)
	waitContenders(t, client, prefix, limit+1)
	time.Sleep(300 * time.Millisecond) // the waiter waits on full slots
	mu.Lock()
	released = true
	mu.Unlock()
	if err := holders[0].Release(); err != nil {
		t.Fatal(err)
	}
	holders = holders[1:]
	if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run = %v, exit %d", err, res.ExitCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if atStart < 1 || !calls[atStart-1] {
		t.Errorf("BeforeTake calls %v, %d before the command: none after the hand-off", calls, atStart)
	}
}

// holdAll takes every slot of prefix (the lock when limit is 1) with the
// api's own sessions, as other nodes would, and returns a func that gives
// one back. The rest are given back when the test ends.
func holdAll(t *testing.T, c *api.Client, prefix string, limit int) (releaseOne func()) {
	t.Helper()
	return holdSlots(t, c, prefix, limit, limit)[0]
}
