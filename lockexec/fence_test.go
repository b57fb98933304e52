package lockexec

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFenceArithmetic checks the times the fence derives from a
// confirmation: SIGTERM at confirmed + lockDelay - margin - grace, dead by
// confirmed + lockDelay - margin, with the grace capped.
func TestFenceArithmetic(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name               string
		lockDelay, grace   time.Duration
		wantStop, wantDead time.Duration // after t0
	}{
		{"defaults", 0, DefaultKillGrace, 8 * time.Second, 13 * time.Second},
		{"short grace", 15 * time.Second, time.Second, 12 * time.Second, 13 * time.Second},
		{"grace capped", 15 * time.Second, time.Minute, 8 * time.Second, 13 * time.Second},
		{"long lock delay", time.Minute, DefaultKillGrace, 53 * time.Second, 58 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFence(tc.lockDelay, tc.grace)
			f.confirm(t0)
			// An answer to an older request changes nothing.
			f.confirm(t0.Add(-time.Second))
			if got := f.stopAt().Sub(t0); got != tc.wantStop {
				t.Errorf("stopAt = t0+%s, want t0+%s", got, tc.wantStop)
			}
			if got := f.deadBy().Sub(t0); got != tc.wantDead {
				t.Errorf("deadBy = t0+%s, want t0+%s", got, tc.wantDead)
			}
			if got := fenceSlack(tc.lockDelay, tc.grace); got != tc.wantStop {
				t.Errorf("fenceSlack = %s, want %s", got, tc.wantStop)
			}
			f.confirm(t0.Add(3 * time.Second))
			if got := f.stopAt().Sub(t0); got != tc.wantStop+3*time.Second {
				t.Errorf("after a later confirmation stopAt = t0+%s, want t0+%s", got, tc.wantStop+3*time.Second)
			}
		})
	}
}

// TestFenceWatch runs the fence's clock for real with a short lock delay:
// it must not fire while confirmations keep coming, and must fire, with a
// cause wrapping ErrLockLost, once they stop.
func TestFenceWatch(t *testing.T) {
	const slack = time.Second
	f := newFence(fenceMargin+slack+100*time.Millisecond, 100*time.Millisecond)
	f.confirm(time.Now())
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go f.watch(done, cancel)

	confirming := time.Now().Add(3 * slack)
	for time.Now().Before(confirming) {
		f.confirm(time.Now())
		if ctx.Err() != nil {
			t.Fatalf("the fence fired while confirmations came every 50ms: %v", context.Cause(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	last := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(slack + 10*time.Second):
		t.Fatal("the fence did not fire after confirmations stopped")
	}
	if took := time.Since(last); took < slack-100*time.Millisecond {
		t.Errorf("the fence fired %s after the last confirmation, before its slack of %s", took, slack)
	}
	cause := context.Cause(ctx)
	if !errors.Is(cause, ErrLockLost) || !errors.Is(cause, errNotConfirmed) {
		t.Errorf("cause %v, want ErrLockLost and errNotConfirmed", cause)
	}
}
