package lockexec_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
)

// TestRunFastCommandsQueueWithoutSleeping runs many short commands on one
// lock at once. consul's api.Lock slept five seconds whenever an acquire
// lost a race on a key that had just been released; the whole queue must
// now drain in well under that. It is a guard against that sleep coming
// back, not a speed target.
func TestRunFastCommandsQueueWithoutSleeping(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const runs = 20

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, runs)
	for i := 0; i < runs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opts := shellOpts(t, prefix, 1, "sleep 0.001")
			opts.Logger = testLogger(t).Named(strconv.Itoa(i))
			res, err := r.Run(context.Background(), opts)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("run %d exited %d", i, res.ExitCode)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	took := time.Since(start)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d runs took %s", runs, took)
	if took > 4*time.Second {
		t.Errorf("%d runs of a 1ms command took %s, want well under 5s", runs, took)
	}
	assertClean(t, client, prefix)
}

// TestRunSemaphorePrunesDeadHolder fills a semaphore with holders whose
// sessions then die without giving their slots back: a waiter must take a
// slot once the lock delay has passed since it saw the holder gone (the
// dead holder may be a frozen node whose command the fence is still
// stopping), and not before.
func TestRunSemaphorePrunesDeadHolder(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	const limit = 2

	var sessions []string
	for i := 0; i < limit; i++ {
		id, _, err := client.Session().Create(&api.SessionEntry{
			Name: "test holder", TTL: "60s", Behavior: api.SessionBehaviorDelete,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = client.Session().Destroy(id, nil) })
		s, err := client.SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: limit, Session: id})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Acquire(nil); err != nil {
			t.Fatalf("holding a slot: %v", err)
		}
		sessions = append(sessions, id)
	}

	dir := t.TempDir()
	opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
	opts.KillGrace = time.Second
	opts.LockDelay = 8 * time.Second // the least the fence allows with that grace, to keep the test short
	run := startRun(t, context.Background(), lockexec.New(client), opts)
	waitOurSession(t, client, prefix)
	time.Sleep(300 * time.Millisecond)
	if fileExists(dir + "/ran") {
		t.Fatal("the command ran while every slot was held")
	}

	// The holder dies: its contender key goes with its session, but its
	// name stays in the lock key's holders.
	if _, err := client.Session().Destroy(sessions[0], nil); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	if _, err := run.wait(t, opts.LockDelay+20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	took := time.Since(died)
	t.Logf("the dead holder's slot was taken after %s", took)
	if took < opts.LockDelay {
		t.Errorf("the dead holder's slot was taken after %s, before the lock delay of %s", took, opts.LockDelay)
	}
	if took > opts.LockDelay+10*time.Second {
		t.Errorf("the dead holder's slot was taken only after %s", took)
	}
	if !fileExists(dir + "/ran") {
		t.Error("the command did not run")
	}
}

// TestRunSemaphoreSiblingPrefixes uses prefixes where one is the other
// with a suffix, "…/x" and "…/x2": the holders of one must never count
// against the other.
func TestRunSemaphoreSiblingPrefixes(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	base := uniquePrefix(t)
	x, x2 := base+"/x", base+"/x2"
	const limit = 2

	// Fill x2 with our own runs, which keep waiting until told to go.
	dir := t.TempDir()
	var fillers []*bgRun
	for i := 0; i < limit; i++ {
		script := fmt.Sprintf(`touch %[1]s/x2-%[2]d; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir, i)
		fillers = append(fillers, startRun(t, context.Background(), r, shellOpts(t, x2, limit, script)))
		waitFor(t, "a holder of x2", 10*time.Second, func() bool {
			return fileExists(filepath.Join(dir, fmt.Sprintf("x2-%d", i)))
		})
	}

	// Both slots of x at once: each command waits for the other's.
	var wg sync.WaitGroup
	errs := make(chan error, limit)
	for i := 0; i < limit; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			script := fmt.Sprintf(`touch %[1]s/x-%[2]d; n=0; while [ ! -e %[1]s/x-%[3]d ]; do n=$((n+1)); [ $n -gt 200 ] && exit 9; sleep 0.05; done`,
				dir, i, 1-i)
			opts := shellOpts(t, x, limit, script)
			opts.Try = 10 * time.Second
			res, err := r.Run(context.Background(), opts)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("the holders of %q did not run together (exit %d)", x, res.ExitCode)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	assertClean(t, client, x)

	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range fillers {
		if _, err := f.wait(t, 15*time.Second); err != nil {
			t.Errorf("a holder of x2: %v", err)
		}
	}
	assertClean(t, client, x2)
}

// TestRunSemaphoreInteropWithAPI mixes our runs with consul's
// api.Semaphore, which `consul lock -n` uses, on one prefix: each side's
// slots count against the other's limit, and a slot given back by either
// side goes to the other.
func TestRunSemaphoreInteropWithAPI(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const limit = 2
	dir := t.TempDir()

	apiSemaphore := func(wait time.Duration) *api.Semaphore {
		t.Helper()
		s, err := client.SemaphoreOpts(&api.SemaphoreOptions{
			Prefix: prefix, Limit: limit, SessionName: "test holder",
			SemaphoreWaitTime: wait, SemaphoreTryOnce: wait > 0,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// One slot through the api, one through us: full.
	a := apiSemaphore(0)
	if _, err := a.Acquire(nil); err != nil {
		t.Fatalf("api acquire: %v", err)
	}
	aHeld := true
	t.Cleanup(func() {
		if aHeld {
			_ = a.Release()
		}
	})
	first := startRun(t, context.Background(), r, shellOpts(t, prefix, limit,
		fmt.Sprintf(`touch %[1]s/first; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir)))
	first.waitStarted(t, dir+"/first")

	// Neither side gets a third slot.
	b := apiSemaphore(500 * time.Millisecond)
	if lost, err := b.Acquire(nil); err != nil || lost != nil {
		_ = b.Release()
		t.Fatalf("the api took a third slot of %d (err %v)", limit, err)
	}
	opts := shellOpts(t, prefix, limit, "true")
	opts.Try = 500 * time.Millisecond
	if _, err := r.Run(context.Background(), opts); !errors.Is(err, lockexec.ErrNotAcquired) {
		t.Fatalf("Run with every slot held: %v, want ErrNotAcquired", err)
	}

	// The api's slot, given back, goes to our waiter at once.
	waiter := startRun(t, context.Background(), r, shellOpts(t, prefix, limit, "touch "+dir+"/waiter"))
	waitFor(t, "the waiter's session", 10*time.Second, func() bool { return len(ourSessions(t, client, prefix)) == 2 })
	time.Sleep(200 * time.Millisecond)
	if fileExists(dir + "/waiter") {
		t.Fatal("the waiter ran while every slot was held")
	}
	released := time.Now()
	if err := a.Release(); err != nil {
		t.Fatalf("api release: %v", err)
	}
	aHeld = false
	if _, err := waiter.wait(t, 10*time.Second); err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if took := time.Since(released); took > 2*time.Second {
		t.Errorf("our waiter took %s to get the slot the api gave back", took)
	}

	// Ours, given back, goes to the api's waiter. Fill the slot our
	// waiter left first, so that the api has to wait for ours.
	d := apiSemaphore(0)
	if _, err := d.Acquire(nil); err != nil {
		t.Fatalf("api acquire: %v", err)
	}
	c := apiSemaphore(10 * time.Second)
	got := make(chan error, 1)
	go func() {
		lost, err := c.Acquire(nil)
		if err == nil && lost == nil {
			err = errors.New("not acquired in time")
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the api took a third slot of %d (err %v)", limit, err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := first.wait(t, 10*time.Second); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("api acquire after our release: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the api did not get a slot after ours was given back")
	}
	for _, s := range []*api.Semaphore{c, d} {
		if err := s.Release(); err != nil {
			t.Errorf("api release: %v", err)
		}
	}
	_ = c.Destroy()
	assertClean(t, client, prefix)
}

// TestRunSemaphoreHandsSlotOn: a holder giving its slot back hands it to
// our oldest waiter in the same write, instead of freeing it for the
// waiters to race for; the limit holds throughout.
func TestRunSemaphoreHandsSlotOn(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const limit = 2
	dir := t.TempDir()

	// The other slot is held elsewhere for the whole test.
	other, err := client.SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: limit, SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(nil); err != nil {
		t.Fatalf("api acquire: %v", err)
	}
	otherHeld := true
	t.Cleanup(func() {
		if otherHeld {
			_ = other.Release()
		}
	})

	var log syncBuffer
	opts := shellOpts(t, prefix, limit, fmt.Sprintf(`touch %[1]s/first; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir))
	opts.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &log})
	first := startRun(t, context.Background(), r, opts)
	first.waitStarted(t, dir+"/first")

	waiter := startRun(t, context.Background(), r, shellOpts(t, prefix, limit, "touch "+dir+"/waiter"))
	waitFor(t, "the waiter's session", 10*time.Second, func() bool { return len(ourSessions(t, client, prefix)) == 2 })
	time.Sleep(200 * time.Millisecond)
	if fileExists(dir + "/waiter") {
		t.Fatal("the waiter ran while every slot was held")
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := first.wait(t, 10*time.Second); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	res, err := waiter.wait(t, 10*time.Second)
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if want := "semaphore slot handed over"; !strings.Contains(log.String(), want) || !strings.Contains(log.String(), res.Session) {
		t.Errorf("the first holder's log does not say %q to the waiter's session %s:\n%s", want, res.Session, log.String())
	}
	if err := other.Release(); err != nil {
		t.Fatalf("api release: %v", err)
	}
	otherHeld = false
	_ = other.Destroy()
	assertClean(t, client, prefix)
}

// TestRunSemaphoreWaiterGivesBackHandedSlot: a waiter that stops waiting
// after a hand-off put it among the holders, unseen (it was waiting on
// another key, far back in the queue), takes itself out of the holders.
// Left there with its session gone, the slot would be lost to our other
// waiters for the lock delay.
func TestRunSemaphoreWaiterGivesBackHandedSlot(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const limit = 2
	holdElsewhere(t, client, prefix, limit)

	// Four of ours ahead (two rounds), so that the last waits far back.
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after cancel: cleanups run last first
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	acquire := func(ctx context.Context, results chan<- error, onSession func(string)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, err := r.Acquire(ctx, lockexec.Options{Prefix: prefix, Limit: limit, Logger: testLogger(t), OnSession: onSession})
			if err == nil {
				<-ctx.Done()
				err = lease.Release()
			}
			results <- err
		}()
	}
	ahead := make(chan error, 4)
	for i := range 4 {
		acquire(ctx, ahead, nil)
		waitContenders(t, client, prefix, limit+i+1) // the two held elsewhere have one each
	}
	lastCtx, stopLast := context.WithCancel(ctx)
	last := make(chan error, 1)
	sessions := make(chan string, 1)
	acquire(lastCtx, last, func(id string) { sessions <- id })
	session := <-sessions
	waitContenders(t, client, prefix, limit+5)
	time.Sleep(500 * time.Millisecond)

	// A hand-off to the last waiter: one holder out, the waiter in.
	key := prefix + "/" + lockexec.LockKeySuffix
	for {
		pair, _, err := client.KV().Get(key, nil)
		if err != nil || pair == nil {
			t.Fatalf("reading %s: %v", key, err)
		}
		var v struct {
			Limit   int
			Holders map[string]bool
		}
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			t.Fatal(err)
		}
		for id := range v.Holders {
			delete(v.Holders, id)
			break
		}
		v.Holders[session] = true
		if pair.Value, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
		if ok, _, err := client.KV().CAS(pair, nil); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
	}
	stopLast()
	select {
	case err := <-last:
		if err == nil {
			t.Fatal("the last waiter acquired: it was meant to be waiting far back")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the last waiter did not stop waiting")
	}
	pair, _, err := client.KV().Get(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pair != nil && strings.Contains(string(pair.Value), session) {
		t.Errorf("the waiter that stopped is still among the holders: %s", pair.Value)
	}
}

// TestRunSemaphoreHandOffWakesFarWaiter: a waiter far back in the queue
// watches the contender key two rounds ahead of it, not the lock key. When
// a hand-off reaches it while that one still holds its slot, the hand-off
// wakes it through its own contender key; without that it would notice
// only when its far wait ran out (6 s and more here).
func TestRunSemaphoreHandOffWakesFarWaiter(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	const limit, waiting = 2, 8

	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after cancel: cleanups run last first
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	type got struct {
		lease *lockexec.Lease
		err   error
	}
	acquire := func() chan got {
		ch := make(chan got, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, err := r.Acquire(ctx, lockexec.Options{Prefix: prefix, Limit: limit, Logger: testLogger(t)})
			ch <- got{lease, err}
			if err == nil {
				<-ctx.Done()
				_ = lease.Release()
			}
		}()
		return ch
	}
	held := func(ch chan got, who string) *lockexec.Lease {
		t.Helper()
		select {
		case g := <-ch:
			if g.err != nil {
				t.Fatalf("%s: %v", who, g.err)
			}
			return g.lease
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not get a slot", who)
		}
		return nil
	}
	// Our two holders, then the waiters, in order.
	holders := []*lockexec.Lease{held(acquire(), "holder 1"), held(acquire(), "holder 2")}
	var queue []chan got
	for i := range waiting + 1 {
		queue = append(queue, acquire())
		waitContenders(t, client, prefix, limit+i+1)
	}
	time.Sleep(500 * time.Millisecond)

	// Slot 1 goes down the queue to the fifth waiter, which keeps it: the
	// last waiter watches its contender key.
	lease := holders[0]
	for i := range 5 {
		if err := lease.Release(); err != nil {
			t.Fatal(err)
		}
		lease = held(queue[i], fmt.Sprintf("waiter %d", i+1))
	}
	// Slot 2 goes down the rest of the queue to the last waiter.
	lease = holders[1]
	for i := 5; i < waiting; i++ {
		if err := lease.Release(); err != nil {
			t.Fatal(err)
		}
		lease = held(queue[i], fmt.Sprintf("waiter %d", i+1))
	}
	if err := lease.Release(); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	held(queue[waiting], "the last waiter")
	if took := time.Since(released); took > 3*time.Second {
		t.Errorf("the last waiter took %s to notice the slot handed to it", took)
	}
}
