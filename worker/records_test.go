package worker

import (
	"testing"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/state"
)

// Closing the records writes nothing to the state directory: the worker
// has let go of it by then, and a successor may have recorded its own
// session, which must stay.
func TestRecordsCloseLeavesTheStateDirectoryAlone(t *testing.T) {
	tests := []struct {
		name     string
		recorded string // what the state directory holds when the worker closes
	}{
		{"its own", "mine"},
		{"a successor's", "successor"},
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
			if st.RecordsSession != tt.recorded {
				t.Fatalf("records session after close: %q, want %q as before", st.RecordsSession, tt.recorded)
			}
		})
	}
}
