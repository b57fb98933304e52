package lockexec

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestSuccessor(t *testing.T) {
	ours := func(id string) *api.KVPair { return &api.KVPair{Key: "p/" + id, Session: id, Value: handoffValue} }
	theirs := func(id string) *api.KVPair { return &api.KVPair{Key: "p/" + id, Session: id} }
	tests := []struct {
		name    string
		waiting []*api.KVPair
		holders map[string]bool
		want    string // "" for nobody
	}{
		{"nobody waits", nil, map[string]bool{"h": true}, ""},
		{"the oldest waiter", []*api.KVPair{ours("a"), ours("b")}, map[string]bool{}, "a"},
		{"holders are skipped", []*api.KVPair{ours("a"), ours("b")}, map[string]bool{"a": true}, "b"},
		{"consul lock waits first: nobody jumps it", []*api.KVPair{theirs("a"), ours("b")}, map[string]bool{}, ""},
		{"consul lock holding is skipped", []*api.KVPair{theirs("a"), ours("b")}, map[string]bool{"a": true}, "b"},
		{"an older ct-supervise waits first", []*api.KVPair{{Key: "p/a", Session: "a", Value: []byte("")}, ours("b")}, nil, ""},
	}
	for _, tt := range tests {
		got := successor(tt.waiting, tt.holders)
		switch {
		case tt.want == "" && got != nil:
			t.Errorf("%s: successor = %s, want nobody", tt.name, got.Session)
		case tt.want != "" && (got == nil || got.Session != tt.want):
			t.Errorf("%s: successor = %v, want %s", tt.name, got, tt.want)
		}
	}
}

func TestFarWait(t *testing.T) {
	tests := []struct {
		ahead, limit int
		want         time.Duration
	}{
		{20, 10, pruneInterval},
		{39, 10, pruneInterval},
		{40, 10, 2 * pruneInterval},
		{200, 10, 10 * pruneInterval},
		{100000, 10, blockingWait},
		{4, 2, pruneInterval},
	}
	for _, tt := range tests {
		if got := farWait(tt.ahead, tt.limit); got != tt.want {
			t.Errorf("farWait(%d, %d) = %s, want %s", tt.ahead, tt.limit, got, tt.want)
		}
	}
}
