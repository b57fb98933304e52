package lockexec

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// Reclaim gives back the lock or semaphore slot at prefix that session took
// for a run whose process died (a worker killed mid-action), and destroys
// the session. The caller guarantees that the run's command is gone.
//
// STUB until the lockexec branch's own Reclaim lands: the lock is released
// before the session is destroyed, so Consul applies no lock-delay; a
// semaphore's contender key goes with the session.
func (r *Runner) Reclaim(ctx context.Context, prefix string, limit int, session string) error {
	wo := (&api.WriteOptions{}).WithContext(ctx)
	if limit <= 1 {
		p := &api.KVPair{Key: prefix + "/" + LockKeySuffix, Session: session, Flags: api.LockFlagValue}
		if _, _, err := r.client.KV().Release(p, wo); err != nil {
			return fmt.Errorf("releasing %s: %w", p.Key, err)
		}
	}
	if _, err := r.client.Session().Destroy(session, wo); err != nil {
		return fmt.Errorf("destroying session %s: %w", session, err)
	}
	return nil
}
