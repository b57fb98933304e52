package state

import (
	"bytes"
	"testing"
	"time"

	"ct-supervise/plugin"
)

// FuzzDecodeState feeds arbitrary bytes to the state-file reader. A file
// is either refused with an error (never a panic) or read into a state the
// queue can work with, which encodes to a file that reads back the same.
func FuzzDecodeState(f *testing.F) {
	st := NewState()
	d := plugin.DefaultDeclaration()
	d.Name, d.Command = "nginx", []string{"nginx -s reload"}
	if err := d.Finish(); err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st.Actions["nginx"] = &Action{Declaration: d, DeclaredAt: now, Pending: true, Seq: 3, Done: 1, Running: true, RunSeq: 2}
	st.Errors = map[string]DeclError{"": {Message: "malformed JSON", At: now}}
	st.Seq = 3
	good, err := encodeState(st)
	if err != nil {
		f.Fatal(err)
	}
	seeds := [][]byte{
		good,
		[]byte(`{"version":1}`),
		[]byte(`{"version":1,"seq":5,"actions":{"a":null}}`),
		[]byte(`{"version":1,"actions":{"a":{"declaration":{"command":[]}}}}`),
		[]byte(`{"version":1,"actions":{"a":{"seq":1,"done":2,"running":true,"run_seq":9}}}`),
		[]byte(`{"version":1,"actions":{"a":{"attempts":-1,"next_attempt":"0001-01-01T00:00:00Z"}}}`),
		[]byte(`{"version":2}`),
		[]byte(`{"version":0}`),
		[]byte(`{"version":"1"}`),
		[]byte(`{"version":1,"errors":{"x":{"message":"m","at":"bad"}}}`),
		[]byte(`[]`),
		[]byte(`null`),
		[]byte(``),
		good[:len(good)/2],
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeState(data)
		if err != nil {
			if st != nil {
				t.Fatalf("an error (%v) and a state", err)
			}
			return
		}
		// What the worker and status do with a state they read.
		now := time.Now()
		st.QueueLen()
		st.Next(now)
		st.Interrupted()

		enc, err := encodeState(st)
		if err != nil {
			return // e.g. a time outside what JSON can hold: Update reports it
		}
		st2, err := decodeState(enc)
		if err != nil {
			t.Fatalf("a state read from %q encodes to %q, which does not read back: %v", data, enc, err)
		}
		enc2, err := encodeState(st2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("state file does not round-trip:\n%s\n%s (%v)", enc, enc2, err)
		}
	})
}
