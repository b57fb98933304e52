package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/fleet"
)

// Publisher is implemented by a Runner that publishes this node's record
// of an action in the fleet's rollout view. A Runner without it publishes
// nothing.
type Publisher interface {
	// Publish writes r (its Node filled in) under the action's prefix.
	Publish(ctx context.Context, prefix string, r fleet.Record) error
}

// recordSessionTTL is the TTL of the session that holds a running
// worker's records: a worker killed mid-action leaves records that read
// "gone" within about twice this. Consul's minimum is 10s.
const recordSessionTTL = "10s"

// publishTimeout bounds one publication.
const publishTimeout = 10 * time.Second

// finalPublishTimeout bounds the publication of a run's result, which the
// track waits for: with Consul away, the next run must not wait long.
const finalPublishTimeout = 5 * time.Second

// records holds this node's fleet records in Consul with two sessions:
// the worker's own (a TTL session renewed while the worker runs,
// destroyed when it exits), and, once the worker has exited cleanly, an
// idle session bound only to the agent's node health. So a record reads
// "gone" when the worker died mid-action or the node's agent is down, not
// when a worker that had nothing left to do exited.
type records struct {
	log hclog.Logger

	mu     sync.Mutex
	client *api.Client
	id     string          // the worker session, "" until needed
	stop   chan struct{}   // closed to end the renewal (which destroys it)
	ended  chan struct{}   // closed when the renewal has ended
	held   map[string]bool // prefixes whose record this worker published
}

func newRecords(log hclog.Logger) *records {
	return &records{log: log, held: map[string]bool{}}
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
		if err := client.Session().RenewPeriodic(recordSessionTTL, id, nil, stop); err != nil {
			rs.log.Warn("the worker's session for the rollout view ended; a new one is made at the next publication", "error", err)
		}
	}(rs.stop, rs.ended)
	return id, nil
}

// endLocked ends the current worker session, if any, and waits a little
// for its destruction.
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

// publish writes r under prefix with the worker session, taking the key
// back from this node's idle session if that holds it.
func (rs *records) publish(ctx context.Context, client *api.Client, prefix string, r fleet.Record) error {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	id, err := rs.session(ctx, client, r.Node)
	if err != nil {
		return err
	}
	f := fleet.New(client, prefix)
	err = f.Publish(ctx, id, r)
	if err != nil {
		// Held by this node's idle session since the last worker exited:
		// release it from there and try once more.
		key := f.NodeKey(r.Node)
		q := (&api.QueryOptions{}).WithContext(ctx)
		if pair, _, gerr := client.KV().Get(key, q); gerr == nil && pair != nil && pair.Session != "" {
			if s, _, ierr := client.Session().Info(pair.Session, q); ierr == nil && s != nil && s.Name == idleSessionName(r.Node) {
				_, _, _ = client.KV().Release(&api.KVPair{Key: key, Session: s.ID}, (&api.WriteOptions{}).WithContext(ctx))
				err = f.Publish(ctx, id, r)
			}
		}
	}
	if err == nil {
		rs.mu.Lock()
		rs.held[prefix] = true
		rs.mu.Unlock()
	}
	return err
}

// close hands every record the worker published over to this node's idle
// session and destroys the worker session. node is this node's name.
func (rs *records) close(node string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	idle, err := idleSession(ctx, rs.client, rs.id, node)
	if err != nil {
		rs.log.Warn("the rollout view will show this node as gone until its next action", "error", err)
	}
	for prefix := range rs.held {
		if idle == "" {
			break
		}
		key := fleet.New(rs.client, prefix).NodeKey(node)
		pair, _, err := rs.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || pair == nil || pair.Session != rs.id {
			continue
		}
		w := (&api.WriteOptions{}).WithContext(ctx)
		if _, _, err := rs.client.KV().Release(&api.KVPair{Key: key, Session: rs.id}, w); err != nil {
			continue
		}
		if ok, _, err := rs.client.KV().Acquire(&api.KVPair{Key: key, Value: pair.Value, Session: idle}, w); err != nil || !ok {
			rs.log.Debug("could not hand the record over to the idle session", "key", key, "error", err)
		}
	}
	rs.endLocked()
}

// idleSessionName names this node's idle session.
func idleSessionName(node string) string { return "ct-supervise records " + node }

// idleSession finds this node's idle session on the agent's node (the
// node of the worker session), making it if there is none. It has no TTL
// and only the node's health check: it lasts while the agent does.
func idleSession(ctx context.Context, client *api.Client, workerSession, node string) (string, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	own, _, err := client.Session().Info(workerSession, q)
	if err != nil || own == nil {
		return "", fmt.Errorf("reading the worker's session: %v", err)
	}
	list, _, err := client.Session().Node(own.Node, q)
	if err != nil {
		return "", fmt.Errorf("listing the node's sessions: %w", err)
	}
	for _, s := range list {
		if s.Name == idleSessionName(node) {
			return s.ID, nil
		}
	}
	id, _, err := client.Session().Create(&api.SessionEntry{
		Name:      idleSessionName(node),
		Behavior:  api.SessionBehaviorRelease,
		LockDelay: time.Millisecond,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("creating the node's idle session: %w", err)
	}
	return id, nil
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
