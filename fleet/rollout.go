package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Phases a node publishes that the rollout view groups. Others (checking,
// draining, gating, holding) count as running; waits as waiting.
const (
	PhaseIdle    = "idle"
	PhaseFailed  = "failed"
	PhaseQueued  = "queued"
	PhaseRunning = "running"
)

// Resting reports whether a phase is one a node rests in between runs
// (idle, failed, queued): a record in such a phase that no session holds
// any more is a worker that exited after its work, not one that died.
func Resting(phase string) bool {
	return phase == PhaseIdle || phase == PhaseFailed || phase == PhaseQueued
}

// Rollout is the fleet-wide view of one action.
type Rollout struct {
	Prefix string    `json:"prefix"`
	Nodes  []Record  `json:"nodes"`
	Halt   *Halt     `json:"halt,omitempty"`
	Pause  *Pause    `json:"pause,omitempty"`
	Read   time.Time `json:"read"`
}

// Rollout reads the view: every node's record, the halt and the pause.
func (f *Fleet) Rollout(ctx context.Context, prefix string) (Rollout, error) {
	r := Rollout{Prefix: prefix, Read: time.Now().UTC()}
	var err error
	if r.Nodes, err = f.Records(ctx); err != nil {
		return r, err
	}
	r.Halt, r.Pause, err = f.Switches(ctx)
	return r, err
}

// Summary is the one-line state of the rollout, e.g.
// "9 nodes: 6 done at v42, 1 running (web-4), 2 waiting; halted: no; paused: no".
func (r Rollout) Summary() string {
	done := map[string]int{}
	var running, failed, gone []string
	waiting := 0
	for _, n := range r.Nodes {
		switch {
		case n.Gone:
			gone = append(gone, n.Node)
		case n.Phase == PhaseFailed || (n.Phase == PhaseIdle && !n.OK && n.LastResult != ""):
			failed = append(failed, n.Node)
		case n.Phase == PhaseIdle:
			done[n.Version]++
		case isRunning(n.Phase):
			running = append(running, n.Node)
		default:
			waiting++
		}
	}
	parts := doneParts(done)
	if len(running) > 0 {
		parts = append(parts, fmt.Sprintf("%d running (%s)", len(running), strings.Join(running, ", ")))
	}
	if waiting > 0 {
		parts = append(parts, fmt.Sprintf("%d waiting", waiting))
	}
	if len(failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed (%s)", len(failed), strings.Join(failed, ", ")))
	}
	if len(gone) > 0 {
		parts = append(parts, fmt.Sprintf("%d gone (%s)", len(gone), strings.Join(gone, ", ")))
	}
	body := strings.Join(parts, ", ")
	if body == "" {
		body = "no node has published yet"
	}
	nodes := "nodes"
	if len(r.Nodes) == 1 {
		nodes = "node"
	}
	return fmt.Sprintf("%d %s: %s; halted: %s; paused: %s", len(r.Nodes), nodes, body, r.haltText(), r.pauseText())
}

func doneParts(done map[string]int) []string {
	versions := make([]string, 0, len(done))
	for v := range done {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	var parts []string
	for _, v := range versions {
		if v == "" {
			parts = append(parts, fmt.Sprintf("%d done", done[v]))
		} else {
			parts = append(parts, fmt.Sprintf("%d done at %s", done[v], v))
		}
	}
	return parts
}

func isRunning(phase string) bool {
	switch phase {
	case PhaseRunning, "checking", "draining", "gating", "holding":
		return true
	}
	return false
}

func (r Rollout) haltText() string {
	if r.Halt == nil {
		return "no"
	}
	return fmt.Sprintf("by %s at %s: %s", r.Halt.Node, r.Halt.At.UTC().Format(time.RFC3339), r.Halt.Reason)
}

func (r Rollout) pauseText() string {
	if r.Pause == nil {
		return "no"
	}
	scope := ""
	if r.Pause.Global {
		scope = " (all actions)"
	}
	return fmt.Sprintf("by %s at %s%s: %s", r.Pause.By, r.Pause.At.UTC().Format(time.RFC3339), scope, r.Pause.Reason)
}

// BlockedFor says why node may not start the action now, or "" if nothing
// stops it. A halt node set itself does not stop it: its own retry is
// what lifts the halt when it succeeds.
func (r Rollout) BlockedFor(node string) string {
	switch {
	case r.Halt != nil && (node == "" || r.Halt.Node != node):
		return fmt.Sprintf("%v by %s: %s (since %s)", ErrHalted, r.Halt.Node, r.Halt.Reason, r.Halt.At.UTC().Format(time.RFC3339))
	case r.Pause != nil:
		return fmt.Sprintf("%v by %s: %s (since %s)", ErrPaused, r.Pause.By, r.Pause.Reason, r.Pause.At.UTC().Format(time.RFC3339))
	}
	return ""
}
