package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/fleet"
	"ct-supervise/state"
)

// Publisher is implemented by a Runner that publishes this node's record
// of an action in the fleet's rollout view. A Runner without it publishes
// nothing.
type Publisher interface {
	// Publish writes r (its Node filled in) under the action's prefix.
	Publish(ctx context.Context, prefix string, r fleet.Record) error
}

// recordSessionTTL is the TTL of the session that holds a running
// worker's records: if the worker dies and no successor starts to destroy
// it, its records read "gone" once Consul expires it (within about twice
// this). Consul's minimum is 10s.
const recordSessionTTL = "10s"

// publishTimeout bounds one publication.
const publishTimeout = 10 * time.Second

// finalPublishTimeout bounds the publication of a run's result, which the
// track waits for: with Consul away, the next run must not wait long.
const finalPublishTimeout = 5 * time.Second

// records holds this node's fleet records in Consul with the worker's own
// session: a TTL session, renewed while the worker runs, destroyed when it
// exits, its ID kept in the state directory so that a successor destroys
// it if this worker dies. A record whose session is gone reads "gone"
// unless it is a resting one (see fleet.Resting): the worker exits after
// publishing its last result.
type records struct {
	log   hclog.Logger
	store *state.Store

	mu     sync.Mutex
	client *api.Client
	id     string        // the worker session, "" until needed
	stop   chan struct{} // closed to end the renewal (which destroys it)
	ended  chan struct{} // closed when the renewal has ended
}

func newRecords(store *state.Store, log hclog.Logger) *records {
	return &records{store: store, log: log}
}

// session returns the worker session on client, creating it (and
// starting its renewal) if there is none or the last one was lost.
func (rs *records) session(ctx context.Context, client *api.Client, node string) (string, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.id != "" && rs.client == client {
		select {
		case <-rs.ended:
		default:
			return rs.id, nil
		}
	}
	rs.endLocked()
	rs.destroyLeftover(ctx, client)
	id, _, err := client.Session().Create(&api.SessionEntry{
		Name:      "ct-supervise worker " + node,
		TTL:       recordSessionTTL,
		Behavior:  api.SessionBehaviorRelease,
		LockDelay: time.Millisecond,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("creating the worker's session: %w", err)
	}
	rs.client, rs.id = client, id
	rs.stop, rs.ended = make(chan struct{}), make(chan struct{})
	go func(stop, ended chan struct{}) {
		defer close(ended)
		if err := renewSession(client, id, stop); err != nil {
			rs.log.Warn("the worker's session for the rollout view ended; a new one is made at the next publication", "error", err)
		}
	}(rs.stop, rs.ended)
	rs.remember(id)
	return id, nil
}

// renewSession renews the session id every half TTL until stop is closed,
// then destroys it; or until Consul says it is gone, which it returns as
// an error. Every request has a deadline: a frozen agent must not hold the
// renewal (nor the close that waits for it) for ever. A renewal that fails
// is tried again at the next tick; the session outlives one or two.
func renewSession(client *api.Client, id string, stop <-chan struct{}) error {
	ttl, _ := time.ParseDuration(recordSessionTTL)
	tick := time.NewTicker(ttl / 2)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
			defer cancel()
			_, err := client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
			return err
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl/2)
		entry, _, err := client.Session().Renew(id, (&api.WriteOptions{}).WithContext(ctx))
		cancel()
		if err == nil && entry == nil {
			return fmt.Errorf("session %s expired", id)
		}
	}
}

// destroyLeftover destroys the records session a dead predecessor left
// (or the one this worker lost), as recorded in the state directory.
func (rs *records) destroyLeftover(ctx context.Context, client *api.Client) {
	if rs.store == nil {
		return
	}
	st, err := rs.store.Load()
	if err != nil || st.RecordsSession == "" {
		return
	}
	if _, err := client.Session().Destroy(st.RecordsSession, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		rs.log.Debug("could not destroy the records session left behind", "session", st.RecordsSession, "error", err)
	}
}

// remember records id in the state directory, for a successor to destroy
// should this worker die holding it.
func (rs *records) remember(id string) {
	if rs.store == nil {
		return
	}
	err := rs.store.Update(func(st *state.State) error {
		st.RecordsSession = id
		return nil
	})
	if err != nil {
		rs.log.Warn("could not record the records session", "error", err)
	}
}

// endLocked ends the current worker session, if any: closing stop makes
// the renewal destroy it. It waits a little for that.
func (rs *records) endLocked() {
	if rs.id == "" {
		return
	}
	close(rs.stop)
	select {
	case <-rs.ended:
	case <-time.After(publishTimeout):
	}
	rs.id = ""
}

// publish writes r under prefix with the worker session.
func (rs *records) publish(ctx context.Context, client *api.Client, prefix string, r fleet.Record) error {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	id, err := rs.session(ctx, client, r.Node)
	if err != nil {
		return err
	}
	return fleet.New(client, prefix).Publish(ctx, id, r)
}

// close destroys the worker session: the records stay, released, with
// the resting phase each run published last. Call it when the worker has
// stopped.
//
// It writes nothing to the state directory: it runs after the worker let
// go of its instance lock, when a successor may already own the directory
// (and have recorded its own session), and a test or an operator may be
// removing it. The session ID it leaves recorded is harmless: a successor
// destroys it at its first publication, which is a no-op for a session
// already gone and frees one that the destroy here could not reach.
func (rs *records) close() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.endLocked()
}

// feed publishes one run's records in the background, so that a phase
// change never waits on Consul: only the newest record waiting is
// published, and a failure is logged and forgotten (the view is a view;
// the run goes on).
type feed struct {
	pub    Publisher
	prefix string
	log    hclog.Logger

	mu   sync.Mutex
	rec  fleet.Record
	due  bool
	wake chan struct{}
	done chan struct{}
}

// newFeed starts a feed for the action at prefix, or returns nil when the
// runner publishes nothing. base is the record to start from.
func newFeed(r Runner, prefix string, base fleet.Record, log hclog.Logger) *feed {
	pub, ok := r.(Publisher)
	if !ok {
		return nil
	}
	f := &feed{pub: pub, prefix: prefix, log: log, rec: base, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go f.loop()
	return f
}

// phase publishes a new phase.
func (f *feed) phase(phase string) {
	if f == nil {
		return
	}
	f.mu.Lock()
	same := f.rec.Phase == phase
	f.rec.Phase, f.rec.Updated, f.due = phase, time.Now().UTC(), f.due || !same
	f.mu.Unlock()
	if same {
		return // a new detail of the same phase is for status, not the fleet
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *feed) loop() {
	defer close(f.done)
	for range f.wake {
		f.mu.Lock()
		rec, due := f.rec, f.due
		f.due = false
		f.mu.Unlock()
		if !due {
			continue
		}
		if err := f.pub.Publish(context.Background(), f.prefix, rec); err != nil {
			f.log.Debug("could not publish this node's record for the rollout view", "error", err)
		}
	}
}

// finish stops the feed and publishes the run's last record.
func (f *feed) finish(phase, lastResult string, ok bool) {
	if f == nil {
		return
	}
	close(f.wake)
	<-f.done
	f.mu.Lock()
	rec := f.rec
	f.mu.Unlock()
	rec.Phase, rec.LastResult, rec.OK, rec.Updated = phase, lastResult, ok, time.Now().UTC()
	ctx, cancel := context.WithTimeout(context.Background(), finalPublishTimeout)
	defer cancel()
	if err := f.pub.Publish(ctx, f.prefix, rec); err != nil {
		f.log.Warn("could not publish this node's result for the rollout view", "error", err)
	}
}
