package main

import (
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/hashicorp/consul/api"
)

// floorSamples is how many samples of each part of the floor one call to
// measureFloor takes.
const floorSamples = 30

// floor is what the agent and the machine allow a lock hand-off at best, as
// measured in this run: the releasing write and the waiter's wake-up (a
// blocked read returning after a write to its key, the write included),
// the acquiring write, and the fork of the next command. Samples from every
// call are pooled, so that measuring it before and after the hand-off
// rounds averages out load that drifts.
type floor struct {
	write, wake, fork []float64
}

// total is the sum of the three medians: release and wake-up, acquire,
// start.
func (f *floor) total() float64 {
	return summarize(f.wake, "ms").Median + summarize(f.write, "ms").Median + summarize(f.fork, "ms").Median
}

// measureFloor adds floorSamples of each part to f, on key (which it
// deletes when done).
func (b *bench) measureFloor(f *floor, key string) error {
	kv := b.client.KV()
	defer func() { _, _ = kv.Delete(key, nil) }()
	for i := range floorSamples {
		t0 := time.Now()
		if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(fmt.Sprint(i))}, nil); err != nil {
			return fmt.Errorf("floor: writing %s: %w", key, err)
		}
		f.write = append(f.write, ms(time.Since(t0)))
	}
	for i := range floorSamples {
		d, err := b.wakeOnce(key, i)
		if err != nil {
			return err
		}
		f.wake = append(f.wake, ms(d))
	}
	for range floorSamples {
		t0 := time.Now()
		if err := exec.CommandContext(b.ctx, "/bin/true").Run(); err != nil {
			return fmt.Errorf("floor: running /bin/true: %w", err)
		}
		f.fork = append(f.fork, ms(time.Since(t0)))
	}
	return nil
}

// wakeOnce parks a blocking read on key, writes the key, and returns the
// time from the start of the write to the read's return.
func (b *bench) wakeOnce(key string, i int) (time.Duration, error) {
	kv := b.client.KV()
	_, meta, err := kv.Get(key, nil)
	if err != nil {
		return 0, fmt.Errorf("floor: reading %s: %w", key, err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	woke := make(chan time.Time, 1)
	errs := make(chan error, 1)
	go func() {
		q := (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 20 * time.Second}).WithContext(ctx)
		if _, _, err := kv.Get(key, q); err != nil {
			errs <- err
			return
		}
		woke <- time.Now()
	}()
	// Long enough for the read to be parked in the agent, even on a busy
	// machine; a read that arrives after the write returns at once, which
	// only makes the sample smaller than the truth by the time it lost.
	if err := sleepCtx(b.ctx, 20*time.Millisecond); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(fmt.Sprint("wake", i))}, nil); err != nil {
		return 0, fmt.Errorf("floor: writing %s: %w", key, err)
	}
	select {
	case t := <-woke:
		return t.Sub(t0), nil
	case err := <-errs:
		return 0, fmt.Errorf("floor: blocking read of %s: %w", key, err)
	}
}

// floorRow is the table's row for the floor.
func (f *floor) row() Row {
	total := summarize([]float64{f.total()}, "ms")
	w, k, x := summarize(f.write, "ms"), summarize(f.wake, "ms"), summarize(f.fork, "ms")
	return Row{
		ID: "3", Measure: "floor of a hand-off on this agent, this run: blocking wake-up after a write (the write included) + a KV write + fork/exec/wait of /bin/true",
		N: fmt.Sprintf("%d each", len(f.write)), Value: &total, Target: "—",
		Note: fmt.Sprintf("medians: wake-up %s (p99 %s), write %s (p99 %s), fork %s (p99 %s)",
			fmtMS(k.Median), fmtMS(k.P99), fmtMS(w.Median), fmtMS(w.P99), fmtMS(x.Median), fmtMS(x.P99)),
	}
}

// busyAverage is how many runs were in progress on average from the first
// start to the last end: the slots a semaphore kept busy.
func busyAverage(ivs []interval) float64 {
	s := span(ivs)
	if s <= 0 {
		return 0
	}
	var sum int64
	for _, iv := range ivs {
		sum += iv.End - iv.Start
	}
	return float64(sum) / float64(s)
}
