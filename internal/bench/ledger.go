package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"ct-supervise/internal/overlap"
)

// interval is one run of the stamp command: when it started and ended, in
// unix nanoseconds, as the command itself recorded it.
type interval struct {
	ID    string
	Start int64
	End   int64
}

// readLedger parses a ledger written by the stamp command. Every ID must
// have exactly one start and one end line.
func readLedger(path string) ([]interval, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	byID := map[string]*interval{}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s:%d: malformed line %q", path, line, sc.Text())
		}
		ns, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		iv := byID[fields[0]]
		if iv == nil {
			iv = &interval{ID: fields[0]}
			byID[fields[0]] = iv
		}
		switch fields[1] {
		case "S":
			if iv.Start != 0 {
				return nil, fmt.Errorf("%s:%d: %s started twice", path, line, iv.ID)
			}
			iv.Start = ns
		case "E":
			if iv.End != 0 {
				return nil, fmt.Errorf("%s:%d: %s ended twice", path, line, iv.ID)
			}
			iv.End = ns
		default:
			return nil, fmt.Errorf("%s:%d: unknown record %q", path, line, fields[1])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]interval, 0, len(byID))
	for _, iv := range byID {
		if iv.Start == 0 || iv.End == 0 || iv.End < iv.Start {
			return nil, fmt.Errorf("%s: %s has an incomplete or inverted run", path, iv.ID)
		}
		out = append(out, *iv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out, nil
}

// handoffs returns, for runs under a lock (one holder), the gap between each
// run's end and the next run's start, in start order. A negative gap means
// two runs overlapped: mutual exclusion was broken, which is an error.
func handoffs(ivs []interval) ([]float64, error) {
	var gaps []float64
	for i := 1; i < len(ivs); i++ {
		gap := ivs[i].Start - ivs[i-1].End
		if gap < 0 {
			return nil, fmt.Errorf("runs %s and %s overlapped by %s under a lock", ivs[i-1].ID, ivs[i].ID, time.Duration(-gap))
		}
		gaps = append(gaps, ms(time.Duration(gap)))
	}
	return gaps, nil
}

// maxConcurrent is the largest number of runs in progress at one instant
// (see overlap.Max).
func maxConcurrent(ivs []interval) int {
	return overlap.Max(ivs, func(iv interval) (int64, int64) { return iv.Start, iv.End })
}

// span is the time from the first start to the last end.
func span(ivs []interval) time.Duration {
	if len(ivs) == 0 {
		return 0
	}
	first, last := ivs[0].Start, ivs[0].End
	for _, iv := range ivs {
		first = min(first, iv.Start)
		last = max(last, iv.End)
	}
	return time.Duration(last - first)
}
