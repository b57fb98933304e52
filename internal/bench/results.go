package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Row is one line of the results table. Value is ct-supervise's figure,
// Base the baseline's where there is one.
type Row struct {
	ID       string   `json:"id"`
	Measure  string   `json:"measure"`
	N        string   `json:"n"`
	Value    *Summary `json:"ct_supervise,omitempty"`
	Baseline string   `json:"baseline,omitempty"`
	Base     *Summary `json:"baseline_value,omitempty"`
	Target   string   `json:"target,omitempty"`
	Met      *bool    `json:"met,omitempty"`
	Note     string   `json:"note,omitempty"`
}

// Meta describes the run.
type Meta struct {
	Date          string  `json:"date"`
	Command       string  `json:"command"`
	Quick         bool    `json:"quick"`
	CTSupervise   string  `json:"ct_supervise"`
	Consul        string  `json:"consul"`
	GoVersion     string  `json:"go"`
	Platform      string  `json:"platform"`
	CPUs          int     `json:"cpus"`
	LoadAvgStart  string  `json:"loadavg_start"`
	LoadAvgEnd    string  `json:"loadavg_end"`
	TotalSeconds  float64 `json:"total_seconds"`
	HandoffSleep  string  `json:"handoff_action"`
	RollingAction string  `json:"rolling_action"`
	ScaleAction   string  `json:"scale_action"`
}

// Results is everything a run produced.
type Results struct {
	Meta    Meta           `json:"meta"`
	Rows    []Row          `json:"rows"`
	Details map[string]any `json:"details"`
	Table   string         `json:"table_markdown"`

	// workerRSS is the peak RSS (MB) of a worker waiting for the lock, read
	// by the exec scenario for the memory one.
	workerRSS float64
	finalized bool
}

func newResults(b *bench) *Results {
	r := &Results{Details: map[string]any{}}
	r.Meta = Meta{
		Date:          time.Now().UTC().Format(time.RFC3339),
		Command:       strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " "),
		Quick:         b.cfg.quick,
		CTSupervise:   firstLine(b.cts, "version"),
		Consul:        firstLine(b.consul, "version"),
		GoVersion:     runtime.Version(),
		Platform:      runtime.GOOS + "/" + runtime.GOARCH,
		CPUs:          runtime.NumCPU(),
		LoadAvgStart:  loadAvg(),
		HandoffSleep:  b.p.handoffSleep.String(),
		RollingAction: b.p.rollingSleep.String(),
		ScaleAction:   b.p.scaleSleep.String(),
	}
	return r
}

// firstLine runs a binary and returns the first line of its output.
func firstLine(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func (r *Results) add(row Row) { r.Rows = append(r.Rows, row) }

// finalize renders the table, once.
func (r *Results) finalize() {
	if r.finalized {
		return
	}
	r.finalized = true
	sort.SliceStable(r.Rows, func(i, j int) bool { return r.Rows[i].ID < r.Rows[j].ID })
	r.Table = r.render()
}

// cell formats one figure of a summary; a p99 of a single sample is left
// out.
func cell(s *Summary, v float64, p99 bool) string {
	if s == nil || s.N == 0 || math.IsNaN(v) || (p99 && s.N == 1) {
		return "—"
	}
	switch s.Unit {
	case "ms":
		return fmtMS(v)
	case "MB":
		return fmtMB(v)
	case "%":
		return fmt.Sprintf("%+.1f %%", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// render is the markdown table.
func (r *Results) render() string {
	var sb strings.Builder
	mode := "full run"
	if r.Meta.Quick {
		mode = "quick run (-quick)"
	}
	fmt.Fprintf(&sb, "ct-supervise benchmarks — %s, %s, %s, %d CPUs, %s, %s; load average %s → %s; %.0f s\n\n",
		mode, r.Meta.CTSupervise, r.Meta.Consul, r.Meta.CPUs, r.Meta.Platform, r.Meta.Date,
		r.Meta.LoadAvgStart, r.Meta.LoadAvgEnd, r.Meta.TotalSeconds)
	sb.WriteString("| # | Measurement | N | ct-supervise median | ct-supervise p99 | Baseline | Baseline median | Baseline p99 | Target | Result |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		result := "—"
		if row.Met != nil {
			result = "✅ met"
			if !*row.Met {
				result = "❌ missed"
			}
		}
		if row.Note != "" {
			result += " (" + row.Note + ")"
		}
		base := row.Baseline
		if base == "" {
			base = "—"
		}
		var vm, vp, bm, bp float64 = math.NaN(), math.NaN(), math.NaN(), math.NaN()
		if row.Value != nil {
			vm, vp = row.Value.Median, row.Value.P99
		}
		if row.Base != nil {
			bm, bp = row.Base.Median, row.Base.P99
		}
		target := row.Target
		if target == "" {
			target = "—"
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			row.ID, row.Measure, row.N, cell(row.Value, vm, false), cell(row.Value, vp, true), base,
			cell(row.Base, bm, false), cell(row.Base, bp, true), target, result)
	}
	sb.WriteString("\nN is the number of samples (ct-supervise + baseline where two are given); p99 is nearest-rank, so the maximum below 100 samples. ")
	sb.WriteString("Hand-off: K contenders queue behind a lock held by the benchmark, which then lets go; every gap between one holder's command exit and the next holder's command start is a sample (K−1 per round). ")
	sb.WriteString("Rolling: the same, with the overhead measured from the first command start to the last command end. ")
	sb.WriteString("Commands are a small Go program appending start/end unix-nanos to a ledger, run without a shell by both tools.\n")
	return sb.String()
}

func (r *Results) markdown() string {
	r.finalize()
	return r.Table
}

// writeJSON writes the results as indented JSON.
func (r *Results) writeJSON(path string) error {
	r.finalize()
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
