package action

import (
	"context"
	"sync"

	"ct-supervise/fleet"
)

// switchesPrefetch reads the fleet's halt and pause while the lock is being
// taken rather than once it is held, saving the hand-off a round trip.
//
// The node before us records a halt before it releases. A read started
// once our wait has seen the lock free, after that release, therefore
// finds the halt as surely as a read once we hold the lock would. The
// lock's waiter tells us that moment through lockexec.Options.BeforeTake,
// each time it is about to try to take the lock; we start a read then.
// Only the last read started counts: an earlier one went with a take that
// failed, and the wait that followed may have seen another release.
//
// A plain lock has every waiter try at each release, and all but one fail:
// were each to read the switches every time, a crowd of K waiters would
// send 3K reads along with the K writes of every hand-off, which costs
// more than the round trip saved. A waiter that has failed to take the lock
// prefetchTakes times is in such a crowd and mostly loses, so it stops
// reading ahead and reads once it holds the lock, as without a prefetch.
// A semaphore's waiters try only in turn and rarely fail.
type switchesPrefetch struct {
	fleet *fleet.Fleet
	ctx   context.Context // the action's: no read outlives it

	mu sync.Mutex
	// last is the last read started since the previous result was
	// taken; nil when none was, or when the take it went with failed
	// and no read followed the next one.
	last *switchesRead
	// takes counts the tries to take the lock since the previous
	// result.
	takes int
	// reads counts every read still going, taken or superseded, so that
	// stop can wait for all of them.
	reads sync.WaitGroup
}

// prefetchTakes is how many tries to take the lock in one wait read the
// switches ahead: two keep the saving for a waiter with one other ahead of
// it, and bound what a crowd of waiters costs Consul.
const prefetchTakes = 2

// switchesRead is one read of the switches. Its result is set before done
// is closed.
type switchesRead struct {
	cancel context.CancelFunc
	done   chan struct{}
	halt   *fleet.Halt
	pause  *fleet.Pause
	err    error
}

// newSwitchesPrefetch returns a prefetch reading f under ctx, or nil when
// there is no fleet to read.
func newSwitchesPrefetch(ctx context.Context, f *fleet.Fleet) *switchesPrefetch {
	if f == nil {
		return nil
	}
	return &switchesPrefetch{fleet: f, ctx: ctx}
}

// start starts a read in the background, superseding the previous one. It
// is the lock's BeforeTake hook and so must not block.
func (p *switchesPrefetch) start() {
	p.mu.Lock()
	if p.last != nil {
		// Its take failed: nobody will look at it.
		p.last.cancel()
		p.last = nil
	}
	p.takes++
	if p.takes > prefetchTakes {
		p.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	rd := &switchesRead{cancel: cancel, done: make(chan struct{})}
	p.last = rd
	p.reads.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.reads.Done()
		defer close(rd.done)
		rd.halt, rd.pause, rd.err = p.fleet.Switches(ctx)
	}()
}

// result waits for the last read started and returns it, forgetting it,
// so that the next wait for the lock starts afresh. It returns nil when no
// read was started since the previous result, or the last try to take
// the lock started none (see prefetchTakes): the caller must then read the
// switches itself, now that it holds the lock. The read ends with the action's
// context, if not before.
func (p *switchesPrefetch) result() *switchesRead {
	p.mu.Lock()
	rd := p.last
	p.last, p.takes = nil, 0
	p.mu.Unlock()
	if rd == nil {
		return nil
	}
	<-rd.done
	rd.cancel()
	return rd
}

// stop cancels a read whose result was not taken and waits for every read
// to end: none may outlive the action.
func (p *switchesPrefetch) stop() {
	p.mu.Lock()
	if p.last != nil {
		p.last.cancel()
		p.last = nil
	}
	p.takes = 0
	p.mu.Unlock()
	p.reads.Wait()
}

// hook is BeforeTake for the lock's options: start, after prev if the
// caller gave one.
func (p *switchesPrefetch) hook(prev func()) func() {
	if prev == nil {
		return p.start
	}
	return func() {
		prev()
		p.start()
	}
}
