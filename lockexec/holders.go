package lockexec

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/hashicorp/consul/api"
)

// Holder is a session currently holding the lock or a semaphore slot.
type Holder struct {
	Session string `json:"session"`
	Name    string `json:"name"`
	Node    string `json:"node"`
}

// semaphoreLockValue is the part of a semaphore's lock key value we read:
// its limit and the sessions holding a slot.
type semaphoreLockValue struct {
	Limit   int             `json:"Limit"`
	Holders map[string]bool `json:"Holders"`
}

// Holders lists who holds the lock or semaphore at prefix right now, for
// `ct-supervise status`. An unused prefix has no holders. A failure to read
// wraps ErrPermissionDenied (a 403) or ErrConsulUnreachable where they
// apply.
//
// Every request is bounded by callTimeout within q's own context, so that a
// frozen agent cannot hang status.
func (r *Runner) Holders(prefix string, q *api.QueryOptions) ([]Holder, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	ctx, cancel := callCtx(q.Context())
	defer cancel()
	q = q.WithContext(ctx)
	pair, _, err := r.client.KV().Get(prefix+"/"+LockKeySuffix, q)
	if err != nil {
		return nil, consulError(fmt.Sprintf("reading the lock key %q", prefix+"/"+LockKeySuffix), err)
	}
	if pair == nil {
		return nil, nil
	}
	var ids []string
	switch pair.Flags {
	case api.LockFlagValue:
		if pair.Session != "" {
			ids = append(ids, pair.Session)
		}
	case api.SemaphoreFlagValue:
		var v semaphoreLockValue
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			return nil, fmt.Errorf("decoding semaphore at %q: %w", prefix, err)
		}
		for id, held := range v.Holders {
			if held {
				ids = append(ids, id)
			}
		}
		sort.Strings(ids)
	default:
		return nil, fmt.Errorf("key %q is not a lock or semaphore", pair.Key)
	}
	holders := make([]Holder, 0, len(ids))
	for _, id := range ids {
		h := Holder{Session: id}
		// A semaphore may still list a session that just went away; report
		// it with what we know.
		if s, _, err := r.client.Session().Info(id, q); err == nil && s != nil {
			h.Name, h.Node = s.Name, s.Node
		}
		holders = append(holders, h)
	}
	return holders, nil
}
