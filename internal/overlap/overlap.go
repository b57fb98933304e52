// Package overlap measures how many intervals are in progress at once: the
// check, shared by the tests, the demo and the benchmarks, that a lock or
// semaphore never let more holders run than its limit.
package overlap

import (
	"cmp"
	"math"
	"slices"
)

// Max returns the largest number of items whose [start, end) intervals
// cover one instant. An end of 0 means "still running" and counts until the
// end of time. At equal instants an end is counted before a start: ledger
// lines are written inside the lock, so runs that only touch never held it
// together.
func Max[T any](items []T, interval func(T) (start, end int64)) int {
	type event struct {
		at    int64
		delta int
	}
	events := make([]event, 0, 2*len(items))
	for _, it := range items {
		start, end := interval(it)
		if end == 0 {
			end = math.MaxInt64
		}
		events = append(events, event{start, +1}, event{end, -1})
	}
	slices.SortFunc(events, func(a, b event) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.delta, b.delta))
	})
	cur, peak := 0, 0
	for _, e := range events {
		cur += e.delta
		peak = max(peak, cur)
	}
	return peak
}
