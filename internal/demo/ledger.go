package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// event is one line of the ledger: a node's reload starting or ending.
type event struct {
	node  string
	start bool
	at    time.Time // when the demo saw the line
}

// ledger follows the file the reload script appends to. The script writes
// no timestamps (`date` has no portable sub-second format); the demo stamps
// each line when it reads it, every pollInterval. The order of the lines is
// exact, though: a node writes its start line after it acquired the lock
// and its end line before it releases it, so in the file an end always
// comes before the start it made room for. That order is what the limit is
// checked on.
type ledger struct {
	path    string
	offset  int64
	partial []byte // a line still being written
	events  []event
}

// poll reads the lines appended since the last poll.
func (l *ledger) poll() error {
	f, err := os.Open(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no reload has run yet
	}
	if err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(l.offset, io.SeekStart); err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	l.offset += int64(len(data))
	now := time.Now()
	data = append(l.partial, data...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(data[:i]))
		data = data[i+1:]
		if line == "" {
			continue
		}
		node, what, ok := strings.Cut(line, " ")
		if !ok || (what != "start" && what != "end") {
			return fmt.Errorf("ledger %s: unexpected line %q", l.path, line)
		}
		l.events = append(l.events, event{node: node, start: what == "start", at: now})
	}
	l.partial = append([]byte(nil), data...)
	return nil
}

// len is the number of events read so far.
func (l *ledger) len() int { return len(l.events) }

// since returns the events from index i on.
func (l *ledger) since(i int) []event { return l.events[min(i, len(l.events)):] }

// maxRunning is the largest number of reloads under way at once, in ledger
// order.
func maxRunning(events []event) int {
	running, peak := 0, 0
	for _, e := range events {
		if e.start {
			running++
		} else {
			running--
		}
		peak = max(peak, running)
	}
	return peak
}
