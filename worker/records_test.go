package worker

import (
	"testing"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/state"
)

// A worker that closes its records after a successor recorded its own
// session leaves the successor's in the state directory; its own it clears.
func TestRecordsCloseClearsOnlyItsOwnSession(t *testing.T) {
	tests := []struct {
		name     string
		recorded string // what the state directory holds when the worker closes
		want     string
	}{
		{"its own", "mine", ""},
		{"a successor's", "successor", "successor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, 3)
			if err := s.Update(func(st *state.State) error { st.RecordsSession = tt.recorded; return nil }); err != nil {
				t.Fatal(err)
			}
			// A renewal that has already ended, as after a lost session.
			ended := make(chan struct{})
			close(ended)
			rs := &records{store: s, log: hclog.NewNullLogger(), id: "mine", stop: make(chan struct{}), ended: ended}
			rs.close()
			st, err := s.Load()
			if err != nil {
				t.Fatal(err)
			}
			if st.RecordsSession != tt.want {
				t.Fatalf("records session after close: %q, want %q", st.RecordsSession, tt.want)
			}
		})
	}
}
