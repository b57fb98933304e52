// Package fleet is the state of a rollout that every node shares through
// Consul KV: a halt that a failing node sets so that the others stop
// starting, an operator's pause switch, and each node's published record
// (phase, last result, the version it applied), from which the rollout
// view is built. It decides nothing about local state and takes no locks.
//
// The records live beside an action's lock prefix, at <prefix>.fleet/,
// not under it: consul's api semaphore (and so `consul lock -n`) refuses a
// prefix holding keys that are not its own, and sharing a prefix with
// `consul lock` is a promise of this project.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// KV layout, relative to an action's lock prefix (and, for the global
// pause, to the KV root).
const (
	// Suffix is appended to an action's lock prefix to form its fleet
	// folder.
	Suffix = ".fleet"

	haltKey  = "halt"
	pauseKey = "pause"
	nodesDir = "nodes/"

	// GlobalPauseKey is the switch that `pause -all` sets: it stops new
	// starts of every action, whatever its prefix.
	GlobalPauseKey = "ct-supervise/.fleet/pause"

	// requestTimeout bounds one read or write that is not a blocking
	// query.
	requestTimeout = 10 * time.Second

	// blockingWait is the wait of one blocking query of WaitClearFor's
	// watches; blocking.Context adds its deadline.
	blockingWait = time.Minute
)

// ErrHalted and ErrPaused describe why an action does not start. WaitClearFor
// does not return them (it waits); callers use them in status text.
var (
	ErrHalted = errors.New("rollout halted")
	ErrPaused = errors.New("rollout paused")
)

// Halt is the record a node sets when its action failed with
// on_failure=halt: no other node starts the action while it stands.
type Halt struct {
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Pause is an operator's switch: no node starts the action while it is
// set. Actions already running finish.
type Pause struct {
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
	// Global is true for the switch set by `pause -all`.
	Global bool `json:"global,omitempty"`
}

// Record is one node's published state for an action.
type Record struct {
	Node    string `json:"node"`
	Phase   string `json:"phase"`
	Version string `json:"version,omitempty"`
	// LastResult is "ok", or the last failure in one line; empty before
	// the first run.
	LastResult string    `json:"last_result,omitempty"`
	OK         bool      `json:"ok"`
	Updated    time.Time `json:"updated"`
	// Gone is true when the session that published the record is no
	// more while the record says the node was at work (a phase other
	// than idle, failed or queued): its worker died, or its agent went
	// down, mid-action, so the record is stale. A worker that exits after
	// its work leaves a resting record, which is not gone. Set when
	// reading, never written.
	Gone bool `json:"gone"`
}

// Fleet reads and writes the fleet records of one action.
type Fleet struct {
	client *api.Client
	dir    string // <prefix>.fleet/
}

// New returns the fleet of the action whose lock prefix is prefix.
func New(client *api.Client, prefix string) *Fleet {
	return &Fleet{client: client, dir: prefix + Suffix + "/"}
}

// Dir is the KV folder of the records, with a trailing slash.
func (f *Fleet) Dir() string { return f.dir }

// SetHalt records a halt. A halt already set by another node stays: the
// first failure is the one the operator needs to see.
func (f *Fleet) SetHalt(ctx context.Context, h Halt) error {
	cur, err := f.Halt(ctx)
	if err != nil {
		return err
	}
	if cur != nil && cur.Node != h.Node {
		return nil
	}
	return f.put(ctx, f.dir+haltKey, h)
}

// ClearHalt lifts the halt if node set it; an empty node lifts any halt
// (an operator's resume). It reports whether a halt was lifted.
func (f *Fleet) ClearHalt(ctx context.Context, node string) (bool, error) {
	cur, err := f.Halt(ctx)
	if err != nil || cur == nil || (node != "" && cur.Node != node) {
		return false, err
	}
	return true, f.delete(ctx, f.dir+haltKey)
}

// Halt returns the halt in force, or nil.
func (f *Fleet) Halt(ctx context.Context) (*Halt, error) {
	var h Halt
	ok, err := f.get(ctx, f.dir+haltKey, &h)
	if !ok || err != nil {
		return nil, err
	}
	return &h, nil
}

// SetPause sets the action's pause switch; with p.Global, the switch of
// every action.
func (f *Fleet) SetPause(ctx context.Context, p Pause) error {
	return f.put(ctx, f.pauseKey(p.Global), p)
}

// ClearPause clears the action's switch, or with global the switch of
// every action. It reports whether one was set.
func (f *Fleet) ClearPause(ctx context.Context, global bool) (bool, error) {
	var p Pause
	ok, err := f.get(ctx, f.pauseKey(global), &p)
	if !ok || err != nil {
		return false, err
	}
	return true, f.delete(ctx, f.pauseKey(global))
}

// Pause returns the pause in force for the action, its own first, else the
// global one, or nil.
func (f *Fleet) Pause(ctx context.Context) (*Pause, error) {
	for _, global := range []bool{false, true} {
		var p Pause
		ok, err := f.get(ctx, f.pauseKey(global), &p)
		if err != nil {
			return nil, err
		}
		if ok {
			p.Global = global
			return &p, nil
		}
	}
	return nil, nil
}

// Switches reads the halt and the pause in force (the action's own pause
// first, else the global one) with the three reads made at once: a node
// that just acquired the lock asks before its command starts, so this is
// on the hand-off's path and costs one round trip, not three.
func (f *Fleet) Switches(ctx context.Context) (*Halt, *Pause, error) {
	var (
		h                  Halt
		own, global        Pause
		hOK, ownOK, globOK bool
		errs               [3]error
		wg                 sync.WaitGroup
	)
	wg.Add(3)
	go func() { defer wg.Done(); hOK, errs[0] = f.get(ctx, f.dir+haltKey, &h) }()
	go func() { defer wg.Done(); ownOK, errs[1] = f.get(ctx, f.pauseKey(false), &own) }()
	go func() { defer wg.Done(); globOK, errs[2] = f.get(ctx, f.pauseKey(true), &global) }()
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return nil, nil, err
	}
	var halt *Halt
	if hOK {
		halt = &h
	}
	switch {
	case ownOK:
		return halt, &own, nil
	case globOK:
		global.Global = true
		return halt, &global, nil
	}
	return halt, nil, nil
}

func (f *Fleet) pauseKey(global bool) string {
	if global {
		return GlobalPauseKey
	}
	return f.dir + pauseKey
}

// Publish writes this node's record, held by session: when the session
// goes (the worker died, the node's agent is down) while the node was at
// work, the record stays but reads as Gone.
func (f *Fleet) Publish(ctx context.Context, session string, r Record) error {
	r.Gone = false
	value, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding the record of %s: %w", r.Node, err)
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	pair := &api.KVPair{Key: f.NodeKey(r.Node), Value: value, Session: session}
	ok, _, err := f.client.KV().Acquire(pair, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("publishing the record of %s: %w", r.Node, err)
	}
	if !ok {
		return fmt.Errorf("publishing the record of %s: refused (another session holds %q)", r.Node, pair.Key)
	}
	return nil
}

// NodeKey is the KV key of node's record.
func (f *Fleet) NodeKey(node string) string { return f.dir + nodesDir + node }

// Records returns every node's record, sorted by node name.
func (f *Fleet) Records(ctx context.Context) ([]Record, error) {
	pairs, err := f.list(ctx)
	if err != nil {
		return nil, err
	}
	return recordsOf(pairs, f.dir), nil
}

// recordsOf decodes the node records among pairs. A record that does not
// decode is reported as a node with phase "unreadable" rather than
// dropped: a node missing from the view would look done.
func recordsOf(pairs api.KVPairs, dir string) []Record {
	var out []Record
	for _, p := range pairs {
		node, ok := strings.CutPrefix(p.Key, dir+nodesDir)
		if !ok || node == "" {
			continue
		}
		var r Record
		if err := json.Unmarshal(p.Value, &r); err != nil {
			r = Record{Phase: "unreadable", LastResult: err.Error()}
		}
		r.Node = node
		r.Gone = p.Session == "" && !Resting(r.Phase)
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// get reads key into v; ok is false when the key does not exist.
func (f *Fleet) get(ctx context.Context, key string, v any) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	pair, _, err := f.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("reading %q: %w", key, err)
	}
	if pair == nil {
		return false, nil
	}
	if err := json.Unmarshal(pair.Value, v); err != nil {
		return false, fmt.Errorf("decoding %q: %w", key, err)
	}
	return true, nil
}

func (f *Fleet) put(ctx context.Context, key string, v any) error {
	value, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %q: %w", key, err)
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if _, err := f.client.KV().Put(&api.KVPair{Key: key, Value: value}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("writing %q: %w", key, err)
	}
	return nil
}

func (f *Fleet) delete(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if _, err := f.client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("deleting %q: %w", key, err)
	}
	return nil
}

// list reads the fleet folder.
func (f *Fleet) list(ctx context.Context) (api.KVPairs, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	pairs, _, err := f.client.KV().List(f.dir, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("reading %q: %w", f.dir, err)
	}
	return pairs, nil
}

// Known reports whether anything of the action is in Consul: its lock key
// or any fleet record. An operator's resume of a name that has none is a
// typo, not a no-op.
func (f *Fleet) Known(ctx context.Context, prefix string) (bool, error) {
	pairs, err := f.list(ctx)
	if err != nil || len(pairs) > 0 {
		return len(pairs) > 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	keys, _, err := f.client.KV().Keys(prefix+"/", "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("reading %q: %w", prefix+"/", err)
	}
	return len(keys) > 0, nil
}
