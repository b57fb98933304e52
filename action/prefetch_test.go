package action

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ct-supervise/fleet"
	"ct-supervise/lockexec"
)

// A node waiting for the lock while the holder fails gets the lock right
// after the holder's halt: it must see that halt and not run, although it
// reads the switches while it takes the lock, before it holds it.
func TestHaltBeforeReleaseStopsTheWaiter(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(map[int]string{1: "lock", 2: "semaphore"}[limit], func(t *testing.T) {
			testHaltBeforeRelease(t, limit)
		})
	}
}

func testHaltBeforeRelease(t *testing.T, limit int) {
	c := client(t)
	prefix := "test/halt-handoff-" + strings.ReplaceAll(t.Name(), "/", "-")
	f := fleet.New(c, prefix)
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix+fleet.Suffix, nil) })
	dir := t.TempDir()
	gate, started, ran := filepath.Join(dir, "gate"), filepath.Join(dir, "started"), filepath.Join(dir, "ran")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	run := func(opts Options) <-chan error {
		done := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := New(c).Run(ctx, opts)
			done <- err
		}()
		return done
	}

	// The holders: as many as the limit, so that the waiter waits; each
	// ends once its gate file appears, the first with a failure.
	var holders []<-chan error
	for i := range limit {
		script := "touch " + started + "-" + string(rune('a'+i)) + "; while [ ! -e " + gate + "-" + string(rune('a'+i)) +
			" ]; do sleep 0.02; done"
		if i == 0 {
			script += "; exit 1"
		}
		holders = append(holders, run(Options{
			Lock: lockexec.Options{Prefix: prefix, Limit: limit, Command: []string{script}, Shell: true},
			Node: "web-" + string(rune('a'+i)), Fleet: f, OnFailure: OnFailureHalt,
		}))
		waitFile(t, started+"-"+string(rune('a'+i)))
	}

	var mu sync.Mutex
	var phases []string
	sessions := make(chan string, 1)
	next := run(Options{
		Lock: lockexec.Options{Prefix: prefix, Limit: limit, Command: []string{"touch " + ran}, Shell: true,
			OnSession: func(id string) { sessions <- id }},
		Node: "web-next", Fleet: f,
		OnPhase: func(p, d string) {
			mu.Lock()
			defer mu.Unlock()
			phases = append(phases, p+": "+d)
		},
	})
	select {
	case <-sessions:
	case err := <-next:
		t.Fatalf("the waiter returned before waiting for the lock: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter did not create its session")
	}
	// Let the waiter block on the held lock, so that the halt comes after
	// its wait began (a shorter pause only makes the test weaker).
	time.Sleep(500 * time.Millisecond)
	if err := os.WriteFile(gate+"-a", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-holders[0]:
		if err != nil {
			t.Fatalf("the failing holder: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the failing holder did not return")
	}

	halted := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range phases {
			if strings.HasPrefix(p, PhaseHalted+": rollout halted by web-a") {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(30 * time.Second)
	for !halted() {
		select {
		case err := <-next:
			t.Fatalf("the waiter finished (%v) instead of stopping on the halt; phases %v", err, phases)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waiter never reported the halt; phases %v", phases)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the waiter's command ran although the holder before it had halted the rollout")
	}

	// Lifted, the waiter goes on.
	if _, err := f.ClearHalt(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-next:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter did not run after the halt was lifted")
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("the waiter's command did not run after the halt was lifted")
	}
	for i, done := range holders[1:] {
		if err := os.WriteFile(gate+"-"+string(rune('b'+i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Only the last read started counts, none outlives stop, and a waiter
// that keeps failing to take the lock stops reading ahead.
func TestSwitchesPrefetchKeepsTheLastRead(t *testing.T) {
	c := client(t)
	prefix := "test/prefetch-last"
	f := fleet.New(c, prefix)
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix+fleet.Suffix, nil) })
	ctx := context.Background()
	if newSwitchesPrefetch(ctx, nil) != nil {
		t.Fatal("a prefetch without a fleet")
	}
	p := newSwitchesPrefetch(ctx, f)
	if rd := p.result(); rd != nil {
		t.Fatalf("a result with no read started: %+v", rd)
	}

	p.start()
	if err := f.SetHalt(ctx, fleet.Halt{Node: "web-1", Reason: "boom", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	p.start()
	rd := p.result()
	if rd == nil || rd.err != nil || rd.halt == nil || rd.halt.Node != "web-1" {
		t.Fatalf("result = %+v, want the second read, with the halt", rd)
	}
	if rd := p.result(); rd != nil {
		t.Fatalf("a result was given twice: %+v", rd)
	}

	p.start()
	p.mu.Lock()
	last := p.last
	p.mu.Unlock()
	p.stop()
	select {
	case <-last.done:
	default:
		t.Fatal("a read outlived stop")
	}
	if rd := p.result(); rd != nil {
		t.Fatalf("a result after stop: %+v", rd)
	}

	// Past prefetchTakes tries in one wait, the last try reads nothing
	// ahead: the caller reads once it holds the lock.
	for range prefetchTakes + 1 {
		p.start()
	}
	if rd := p.result(); rd != nil {
		t.Fatalf("a result after %d tries: %+v", prefetchTakes+1, rd)
	}
	p.start() // the next wait reads ahead again
	if rd := p.result(); rd == nil || rd.err != nil || rd.halt == nil {
		t.Fatalf("result in the next wait = %+v, want a read with the halt", rd)
	}
	p.stop()
}
