// Command stamp stands in for a reload command in the lock benchmarks. It
// appends "ID S <unix-nanos>" to a ledger file the moment it starts, sleeps
// for the given duration, appends "ID E <unix-nanos>" and exits 0.
//
//	stamp LEDGER ID SLEEP
//
// Each line is a single write on an O_APPEND descriptor, so any number of
// concurrent stamps share one ledger without interleaving, and no shell or
// date(1) start-up sits between the lock hand-off and the timestamp.
package main

import (
	"os"
	"strconv"
	"time"
)

func main() {
	start := time.Now().UnixNano()
	if len(os.Args) != 4 {
		os.Stderr.WriteString("usage: stamp LEDGER ID SLEEP\n")
		os.Exit(2)
	}
	ledger, id := os.Args[1], os.Args[2]
	d, err := time.ParseDuration(os.Args[3])
	if err != nil {
		os.Stderr.WriteString("stamp: " + err.Error() + "\n")
		os.Exit(2)
	}
	f, err := os.OpenFile(ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		os.Stderr.WriteString("stamp: " + err.Error() + "\n")
		os.Exit(1)
	}
	record(f, id, 'S', start)
	time.Sleep(d)
	record(f, id, 'E', time.Now().UnixNano())
	if err := f.Close(); err != nil {
		os.Exit(1)
	}
}

// record appends one ledger line in a single write.
func record(f *os.File, id string, kind byte, ns int64) {
	line := make([]byte, 0, len(id)+24)
	line = append(line, id...)
	line = append(line, ' ', kind, ' ')
	line = strconv.AppendInt(line, ns, 10)
	line = append(line, '\n')
	if _, err := f.Write(line); err != nil {
		os.Stderr.WriteString("stamp: " + err.Error() + "\n")
		os.Exit(1)
	}
}
