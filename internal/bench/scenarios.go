package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ct-supervise/internal/shell"
)

// stateDir makes a fresh ct-supervise state directory (0700, as required)
// whose worker, if any, is stopped at the end.
func (b *bench) stateDir(name string) (string, error) {
	dir, err := os.MkdirTemp(b.tmp, "state-"+name+"-")
	if err != nil {
		return "", err
	}
	b.procs.trackStateDir(dir)
	return dir, nil
}

// registerArgs are the arguments consul-template passes for
// {{ plugin "ct-supervise" "register" "-n=2" "-name=nginx" "-try=10m" "nginx -s reload" }}.
var registerArgs = []string{"register", "-n=2", "-name=nginx", "-try=10m", "nginx -s reload"}

// benchRegister times repeated identical register calls, as consul-template
// makes them on every render, against the no-op binary with the same
// arguments. The binaries alternate so that drift in machine load hits all
// of them alike. When the ct-supervise binary is dynamically linked (a cgo
// build, because net is linked in), a CGO_ENABLED=0 build of the same
// source is measured alongside, for comparison only.
func (b *bench) benchRegister(res *Results) error {
	n := b.p.registerN
	dir, err := b.stateDir("register")
	if err != nil {
		return err
	}
	env := b.env("CT_SUPERVISE_STATE_DIR=" + dir)
	bins := []string{b.cts, b.noop}
	dynamic := isDynamic(b.cts)
	if dynamic {
		b.logf("register: %s is dynamically linked; building a CGO_ENABLED=0 variant for comparison", b.cfg.ctSupervise)
		static, err := b.goBuildStatic()
		if err != nil {
			return err
		}
		bins = append(bins, static)
	}
	b.logf("register: %d calls of each of %d binaries, interleaved", n, len(bins))

	const warmup = 20
	samples := make([][]float64, len(bins))
	for i := range warmup + n {
		for j := range bins {
			// Rotate the order so that none always runs first.
			k := (i + j) % len(bins)
			r, err := b.procs.runOnce(b.ctx, env, append([]string{bins[k]}, registerArgs...)...)
			if err != nil {
				return err
			}
			if k != 1 && r.Stdout != "" {
				return fmt.Errorf("register printed %q; it must print nothing into the rendered file", r.Stdout)
			}
			if i >= warmup {
				samples[k] = append(samples[k], ms(r.Wall))
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		return fmt.Errorf("register left no state file: %w", err)
	}
	c, base := summarize(samples[0], "ms"), summarize(samples[1], "ms")
	ratio := c.Median / base.Median
	met := c.Median <= 5 && ratio <= 2
	link := "static"
	if dynamic {
		link = "dynamically linked"
	}
	res.add(Row{
		ID: "1", Measure: fmt.Sprintf("`register` wall time per call (fork/exec/wait, repeated identical calls; %s binary)", link),
		N: fmt.Sprint(n), Value: &c, Baseline: "no-op Go binary", Base: &base,
		Target: "median ≤ 5 ms and ≤ 2× no-op", Met: &met,
		Note: fmt.Sprintf("%.1f× no-op", ratio),
	})
	if dynamic {
		st := summarize(samples[2], "ms")
		sr := st.Median / base.Median
		stMet := st.Median <= 5 && sr <= 2
		res.add(Row{
			ID: "1", Measure: "`register`, same source built with CGO_ENABLED=0 (static; for comparison, not what `make build` ships)",
			N: fmt.Sprint(n), Value: &st, Baseline: "no-op Go binary", Base: &base,
			Target: "median ≤ 5 ms and ≤ 2× no-op", Met: &stMet,
			Note: fmt.Sprintf("%.1f× no-op", sr),
		})
	}
	return b.benchRegisterCrowded(res)
}

// benchExec times `exec` while the benchmark holds the action's lock, both
// when it has to start the worker (a fresh state directory each time) and
// when a worker is already waiting (the same state directory, each exec
// preceded by a register as on a real render). Once the lock is released
// every worker must run the action and exit.
func (b *bench) benchExec(res *Results) error {
	const name = "bench-exec"
	prefix := "ct-supervise/" + name
	ledger := filepath.Join(b.tmp, "exec.ledger")
	// The action appends to the ledger under a shell-made unique ID, so
	// every run of it by any worker is counted.
	action := shell.Quote(b.stamp) + " " + shell.Quote(ledger) + " exec-$$ 0s"
	reg := []string{b.cts, "register", "-n=1", "-name=" + name, "-try=10m", action}
	execArgs := []string{b.cts, "exec", name}

	release, err := hold(b.client, prefix, 1)
	if err != nil {
		return err
	}
	defer func() {
		if release != nil {
			_ = release()
		}
	}()

	b.logf("exec: %d calls that start a worker, %d with the worker already waiting, lock held by another session", b.p.execColdN, b.p.execWarmN)
	var dirs []string
	var coldMS []float64
	for range b.p.execColdN {
		dir, err := b.stateDir("exec-cold")
		if err != nil {
			return err
		}
		dirs = append(dirs, dir)
		env := b.env("CT_SUPERVISE_STATE_DIR=" + dir)
		if _, err := b.procs.runOnce(b.ctx, env, reg...); err != nil {
			return err
		}
		r, err := b.procs.runOnce(b.ctx, env, execArgs...)
		if err != nil {
			return err
		}
		coldMS = append(coldMS, ms(r.Wall))
	}

	warmDir, err := b.stateDir("exec-warm")
	if err != nil {
		return err
	}
	dirs = append(dirs, warmDir)
	env := b.env("CT_SUPERVISE_STATE_DIR=" + warmDir)
	for _, argv := range [][]string{reg, execArgs} {
		if _, err := b.procs.runOnce(b.ctx, env, argv...); err != nil {
			return err
		}
	}
	var warmMS, regWriteMS []float64
	for range b.p.execWarmN {
		r, err := b.procs.runOnce(b.ctx, env, reg...)
		if err != nil {
			return err
		}
		regWriteMS = append(regWriteMS, ms(r.Wall))
		r, err = b.procs.runOnce(b.ctx, env, execArgs...)
		if err != nil {
			return err
		}
		warmMS = append(warmMS, ms(r.Wall))
	}

	// Every worker must still be waiting: the lock is held elsewhere.
	waiting := 0
	for _, d := range dirs {
		if workerPID(d) != 0 {
			waiting++
		}
	}
	if waiting != len(dirs) {
		return fmt.Errorf("%d of %d workers waiting for the lock; see worker.log in %s", waiting, len(dirs), b.tmp)
	}
	if pid := workerPID(warmDir); pid > 0 {
		res.workerRSS = kbToMB(vmHWMKB(pid))
	}

	// Let go: each worker runs the action and exits on an empty queue.
	rel := release
	release = nil
	released := time.Now()
	if err := rel(); err != nil {
		return err
	}
	if err := waitWorkersGone(b.ctx, dirs, 60*time.Second); err != nil {
		return fmt.Errorf("after the lock was released: %w", err)
	}
	drained := time.Since(released)
	ivs, err := readLedger(ledger)
	if err != nil {
		return err
	}
	if len(ivs) < len(dirs) {
		return fmt.Errorf("the queued action ran %d times for %d state directories", len(ivs), len(dirs))
	}
	// The workers hand the lock on to each other with an action that takes
	// a fraction of a millisecond; long gaps show waiters that wrongly
	// concluded a lock-delay was in force and slept (api.Lock sleeps
	// DefaultLockRetryTime, 5 s, when an acquire fails and the key then
	// reads as unheld).
	gaps, err := handoffs(ivs)
	if err != nil {
		return fmt.Errorf("queued actions: %w", err)
	}
	stalls, stalled := 0, 0.0
	for _, g := range gaps {
		if g >= 1000 {
			stalls++
			stalled += g
		}
	}
	g := summarize(gaps, "ms")
	res.Details["exec_drain"] = map[string]any{
		"workers": len(dirs), "runs": len(ivs), "drain_ms": ms(drained),
		"handoff_ms": g, "stalls_over_1s": stalls, "stalled_ms": stalled,
	}
	drainNote := fmt.Sprintf("once the lock was free, the %d queued workers ran the action %d times and exited within %s",
		len(dirs), len(ivs), fmtMS(ms(drained)))
	if stalls > 0 {
		drainNote += fmt.Sprintf(", %d hand-off(s) ≥ 1 s taking %s of it", stalls, fmtMS(stalled))
	}

	warm, cold := summarize(warmMS, "ms"), summarize(coldMS, "ms")
	metWarm, metCold := warm.Median <= 50, cold.Median <= 50
	res.add(Row{
		ID: "2", Measure: "`exec` return time, lock held by another node, worker already waiting (coalesced)",
		N: fmt.Sprint(len(warmMS)), Value: &warm, Target: "median ≤ 50 ms", Met: &metWarm,
	})
	res.add(Row{
		ID: "2", Measure: "`exec` return time, lock held by another node, starts the worker",
		N: fmt.Sprint(len(coldMS)), Value: &cold, Target: "median ≤ 50 ms", Met: &metCold,
		Note: drainNote,
	})
	rw := summarize(regWriteMS, "ms")
	res.add(Row{
		ID: "1", Measure: "`register` after an `exec` (marks the action pending: state written and fsynced)",
		N: fmt.Sprint(len(regWriteMS)), Value: &rw, Target: "—",
	})
	return nil
}

// benchHandoff measures how long a lock stands idle between holders: K
// contenders queue behind the benchmark's hold; once released, each runs
// the stamp command in turn, and the gap between one's end and the next
// one's start is the hand-off. Rounds alternate between the tools.
//
// The floor (see floor) is measured on the same agent before and after the
// rounds, and each hand-off row says how far above it the median is.
func (b *bench) benchHandoff(res *Results) error {
	var fl floor
	b.logf("hand-off: the floor (a KV write, a blocking wake-up, a fork of /bin/true), %d samples each", floorSamples)
	if err := b.measureFloor(&fl, "bench/floor"); err != nil {
		return err
	}
	var rows []Row
	var medians []float64
	for _, k := range b.p.handoffK {
		rounds := b.p.handoffRounds[k]
		b.logf("hand-off: %d contenders, %d rounds per tool", k, rounds)
		gaps := map[string][]float64{}
		for r := range rounds {
			for _, tool := range toolOrder(r) {
				name := fmt.Sprintf("h%03d-%s-r%02d", k, short(tool), r)
				out, err := b.runRound(lockRound{
					tool: tool, name: name, prefix: "bench/handoff/" + name,
					k: k, limit: 1, sleep: b.p.handoffSleep, preHold: true,
					timeout: time.Duration(k)*(b.p.handoffSleep+2*time.Second) + 60*time.Second,
				})
				if err != nil {
					return err
				}
				g, err := handoffs(out.ivs)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				gaps[tool] = append(gaps[tool], g...)
			}
		}
		c, base := summarize(gaps[toolCTS], "ms"), summarize(gaps[toolConsul], "ms")
		met := c.Median <= 20 && c.Median <= base.Median*1.05
		rows = append(rows, Row{
			ID: "3", Measure: fmt.Sprintf("lock hand-off, %d waiting contenders (command exit → next command start), n=1", k),
			N: fmt.Sprintf("%d + %d", c.N, base.N), Value: &c, Baseline: "consul lock", Base: &base,
			Target: "median ≤ 20 ms and ≤ consul lock (5% noise margin)", Met: &met,
			Note: fmt.Sprintf("%.2f× consul lock", c.Median/base.Median),
		})
		medians = append(medians, c.Median, base.Median)
	}
	if err := b.measureFloor(&fl, "bench/floor"); err != nil {
		return err
	}
	total := fl.total()
	res.add(fl.row())
	for i, row := range rows {
		row.Note += fmt.Sprintf("; %.1f× the floor (consul lock %.1f×)", medians[2*i]/total, medians[2*i+1]/total)
		res.add(row)
	}
	res.Details["floor_ms"] = map[string]any{
		"total": total, "write": summarize(fl.write, "ms"), "wake": summarize(fl.wake, "ms"), "fork": summarize(fl.fork, "ms"),
	}
	return nil
}

// toolOrder alternates which tool goes first from one round to the next.
func toolOrder(round int) []string {
	if round%2 == 0 {
		return []string{toolCTS, toolConsul}
	}
	return []string{toolConsul, toolCTS}
}

// benchRolling runs a rolling reload: K contenders queued behind the
// benchmark's hold, each a 100 ms action, with n holders at a time. The
// overhead is how much longer the first start to the last end took than
// the ideal K × action / n.
func (b *bench) benchRolling(res *Results) error {
	p := b.p
	for _, n := range p.rollingLimits {
		ideal := time.Duration(p.rollingK) * p.rollingSleep / time.Duration(n)
		b.logf("rolling: %d contenders × %s, n=%d (ideal %s), %d run(s) per tool", p.rollingK, p.rollingSleep, n, ideal, p.rollingReps)
		over := map[string][]float64{}
		walls := map[string][]float64{}
		busy := map[string][]float64{}
		peak := map[string]int{}
		for r := range p.rollingReps {
			for _, tool := range toolOrder(r) {
				name := fmt.Sprintf("roll-n%d-%s-r%02d", n, short(tool), r)
				out, err := b.runRound(lockRound{
					tool: tool, name: name, prefix: "bench/rolling/" + name,
					k: p.rollingK, limit: n, sleep: p.rollingSleep, preHold: true,
					timeout: 2*ideal + 90*time.Second,
				})
				if err != nil {
					return err
				}
				if n == 1 {
					if _, err := handoffs(out.ivs); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
				}
				peak[tool] = max(peak[tool], maxConcurrent(out.ivs))
				over[tool] = append(over[tool], 100*(float64(span(out.ivs))/float64(ideal)-1))
				walls[tool] = append(walls[tool], ms(span(out.ivs)))
				busy[tool] = append(busy[tool], busyAverage(out.ivs))
			}
		}
		c, base := summarize(over[toolCTS], "%"), summarize(over[toolConsul], "%")
		cw, bw := summarize(walls[toolCTS], "ms"), summarize(walls[toolConsul], "ms")
		met := c.Median <= 10 && peak[toolCTS] <= n
		note := fmt.Sprintf("first start → last end: %s vs %s; at most %d (ct-supervise) and %d (consul lock) at once",
			fmtMS(cw.Median), fmtMS(bw.Median), peak[toolCTS], peak[toolConsul])
		cb, bb := summarize(busy[toolCTS], "slots"), summarize(busy[toolConsul], "slots")
		if n > 1 {
			note += fmt.Sprintf("; slots busy on average %.1f (consul lock %.1f) of %d", cb.Median, bb.Median, n)
		}
		if peak[toolCTS] > n || peak[toolConsul] > n {
			note += fmt.Sprintf("; LIMIT EXCEEDED (n=%d)", n)
		}
		res.add(Row{
			ID:      "4",
			Measure: fmt.Sprintf("rolling overhead, %d contenders × %s action, n=%d, over the ideal %s", p.rollingK, p.rollingSleep, n, ideal),
			N:       fmt.Sprintf("%d + %d runs", c.N, base.N), Value: &c, Baseline: "consul lock", Base: &base,
			Target: "≤ 10%", Met: &met, Note: note,
		})
		res.Details["rolling_n"+fmt.Sprint(n)] = map[string]any{
			"ideal_ms": ms(ideal), "span_ms": map[string]Summary{toolCTS: cw, toolConsul: bw},
			"max_concurrent": peak, "busy_average": map[string]Summary{toolCTS: cb, toolConsul: bb},
		}
	}
	return nil
}

// scalePoint is one size of the scale test.
type scalePoint struct {
	Tool          string             `json:"tool"`
	Contenders    int                `json:"contenders"`
	Limit         int                `json:"limit"`
	Completed     int                `json:"completed"`
	MaxConcurrent int                `json:"max_concurrent"`
	TotalMS       float64            `json:"total_ms"`
	IdealMS       float64            `json:"ideal_ms"`
	Requests      float64            `json:"requests"`
	PerAction     float64            `json:"requests_per_action"`
	ByEndpoint    map[string]float64 `json:"requests_by_endpoint"`
	AgentCPU      float64            `json:"agent_cpu_seconds"`
	ContenderCPU  float64            `json:"contender_cpu_seconds"`
	// BusyAverage is the slots busy on average from the first command
	// start to the last command end.
	BusyAverage float64 `json:"busy_average"`
}

// benchScale starts K contenders at once on one semaphore and counts the
// agent's HTTP requests per completed action, for growing K.
func (b *bench) benchScale(res *Results) error {
	p := b.p
	var points []scalePoint
	run := func(tool string, k int) error {
		pt, err := b.runScale(tool, k)
		points = append(points, pt)
		return err
	}
	for _, k := range p.scaleK {
		if err := run(toolCTS, k); err != nil {
			return err
		}
		if k == p.scaleConsulK {
			if err := run(toolConsul, k); err != nil {
				return err
			}
		}
	}
	res.Details["scale"] = points

	var cts []scalePoint
	var consulPt *scalePoint
	for i, pt := range points {
		if pt.Tool == toolCTS {
			cts = append(cts, pt)
		} else {
			consulPt = &points[i]
		}
	}
	top, first := cts[len(cts)-1], cts[0]
	// growth is the exponent e of value ∝ K^e between the smallest and
	// the largest K.
	growth := func(v func(scalePoint) float64) (float64, string) {
		e := math.Log(v(top)/v(first)) / math.Log(float64(top.Contenders)/float64(first.Contenders))
		switch {
		case e >= 1.7:
			return e, "quadratic"
		case e >= 1.25:
			return e, "super-linear"
		}
		return e, "linear"
	}
	list := func(f func(scalePoint) string) string {
		var parts []string
		for _, pt := range cts {
			parts = append(parts, fmt.Sprintf("%d: %s", pt.Contenders, f(pt)))
		}
		return strings.Join(parts, ", ")
	}

	timeExp, timeGrowth := growth(func(pt scalePoint) float64 { return pt.TotalMS })
	ok := top.Completed == top.Contenders && top.MaxConcurrent <= top.Limit
	total := summarize([]float64{top.TotalMS}, "ms")
	row := Row{
		ID: "5",
		Measure: fmt.Sprintf("scale: %d contenders queued on one semaphore, n=%d, %s actions: release → last exit (ideal %s)",
			top.Contenders, top.Limit, p.scaleSleep, fmtMS(top.IdealMS)),
		N: "1 run", Value: &total,
		Target: fmt.Sprintf("all complete, never more than %d at once", top.Limit), Met: &ok,
		Note: fmt.Sprintf("%d/%d completed, at most %d at once; time by contenders: %s; time ∝ K^%.2f (%s)",
			top.Completed, top.Contenders, top.MaxConcurrent,
			list(func(pt scalePoint) string { return fmtMS(pt.TotalMS) }), timeExp, timeGrowth),
	}
	row.Note += fmt.Sprintf("; %.2f× ideal, %.1f of %d slots busy on average (by contenders: %s)",
		top.TotalMS/top.IdealMS, top.BusyAverage, top.Limit,
		list(func(pt scalePoint) string { return fmt.Sprintf("%.1f", pt.BusyAverage) }))
	if consulPt != nil && consulPt.Contenders == top.Contenders {
		bt := summarize([]float64{consulPt.TotalMS}, "ms")
		row.Baseline, row.Base = "consul lock", &bt
		row.Note += fmt.Sprintf("; consul lock: %d/%d, at most %d at once, %.2f× ideal, %.1f busy on average",
			consulPt.Completed, consulPt.Contenders, consulPt.MaxConcurrent, consulPt.TotalMS/consulPt.IdealMS, consulPt.BusyAverage)
	}
	res.add(row)

	// Requests per completed action, and how the total grows with K.
	exp, reqGrowth := growth(func(pt scalePoint) float64 { return pt.Requests })
	per := summarize([]float64{top.PerAction}, "requests")
	reqRow := Row{
		ID:      "5",
		Measure: fmt.Sprintf("scale: Consul HTTP requests per completed action at %d contenders (agent's consul_api_http counters)", top.Contenders),
		N:       "1 run", Value: &per,
		Target: "—",
		Note: fmt.Sprintf("total requests by contenders: %s; total ∝ K^%.2f (%s)",
			list(func(pt scalePoint) string { return fmt.Sprintf("%.0f (%.0f/action)", pt.Requests, pt.PerAction) }), exp, reqGrowth),
	}
	if consulPt != nil && consulPt.Contenders == top.Contenders {
		bp := summarize([]float64{consulPt.PerAction}, "requests")
		reqRow.Baseline, reqRow.Base = "consul lock", &bp
	}
	res.add(reqRow)

	if top.AgentCPU > 0 {
		cpuExp, cpuGrowth := growth(func(pt scalePoint) float64 { return pt.AgentCPU + pt.ContenderCPU })
		ms := func(pt scalePoint) float64 { return 1000 * (pt.AgentCPU + pt.ContenderCPU) / float64(pt.Completed) }
		c := summarize([]float64{ms(top)}, "ms")
		cpuRow := Row{
			ID:      "5",
			Measure: fmt.Sprintf("scale: CPU time (agent + contenders) per completed action at %d contenders", top.Contenders),
			N:       "1 run", Value: &c, Target: "—",
			Note: fmt.Sprintf("by contenders: %s; total ∝ K^%.2f (%s)",
				list(func(pt scalePoint) string { return fmtMS(ms(pt)) }), cpuExp, cpuGrowth),
		}
		if consulPt != nil && consulPt.Contenders == top.Contenders && consulPt.AgentCPU > 0 {
			bc := summarize([]float64{ms(*consulPt)}, "ms")
			cpuRow.Baseline, cpuRow.Base = "consul lock", &bc
		}
		res.add(cpuRow)
	}
	res.Details["scale_growth_exponent"] = exp
	if p.scaleHugeK > 0 {
		return b.benchScaleHuge(res, top)
	}
	return nil
}

// benchScaleHuge runs ct-supervise alone (`consul lock` would take minutes)
// with p.scaleHugeK contenders, and compares what each action cost with the
// largest point of the scale test: with costs linear in the contenders,
// requests and CPU per action stay flat.
func (b *bench) benchScaleHuge(res *Results, ref scalePoint) error {
	pt, err := b.runScale(toolCTS, b.p.scaleHugeK)
	if err != nil {
		return err
	}
	res.Details["scale_huge"] = pt
	ok := pt.Completed == pt.Contenders && pt.MaxConcurrent <= pt.Limit
	total := summarize([]float64{pt.TotalMS}, "ms")
	cpu := func(pt scalePoint) float64 { return 1000 * (pt.AgentCPU + pt.ContenderCPU) / float64(pt.Completed) }
	res.add(Row{
		ID: "5b",
		Measure: fmt.Sprintf("scale: %d contenders queued on one semaphore, n=%d, %s actions: release → last exit (ideal %s)",
			pt.Contenders, pt.Limit, b.p.scaleSleep, fmtMS(pt.IdealMS)),
		N: "1 run", Value: &total,
		Target: fmt.Sprintf("all complete, never more than %d at once", pt.Limit), Met: &ok,
		Note: fmt.Sprintf("%d/%d completed, at most %d at once, %.2f× ideal, %.1f of %d slots busy on average; "+
			"per action: %.0f requests, %s CPU (agent + contenders); at %d contenders: %.0f requests, %s",
			pt.Completed, pt.Contenders, pt.MaxConcurrent, pt.TotalMS/pt.IdealMS, pt.BusyAverage, pt.Limit,
			pt.PerAction, fmtMS(cpu(pt)), ref.Contenders, ref.PerAction, fmtMS(cpu(ref))),
	})
	return nil
}

// runScale runs one point of the scale test.
func (b *bench) runScale(tool string, k int) (scalePoint, error) {
	p := b.p
	ideal := time.Duration(k) * p.scaleSleep / time.Duration(p.scaleLimit)
	b.logf("scale: %s, %d contenders on one n=%d semaphore, %s actions (ideal %s)", tool, k, p.scaleLimit, p.scaleSleep, ideal)
	name := fmt.Sprintf("s%04d-%s", k, short(tool))
	out, err := b.runRound(lockRound{
		tool: tool, name: name, prefix: "bench/scale/" + name,
		k: k, limit: p.scaleLimit, sleep: p.scaleSleep, count: true, preHold: true,
		timeout: 5*time.Minute + time.Duration(k)*200*time.Millisecond,
	})
	if err != nil {
		return scalePoint{}, err
	}
	pt := scalePoint{
		Tool: tool, Contenders: k, Limit: p.scaleLimit, Completed: len(out.ivs),
		MaxConcurrent: maxConcurrent(out.ivs), TotalMS: ms(out.wall), IdealMS: ms(ideal),
		Requests: out.requests, PerAction: out.requests / float64(len(out.ivs)), ByEndpoint: out.byEndpoint,
		AgentCPU: out.agentCPU, ContenderCPU: out.contenderCPU, BusyAverage: busyAverage(out.ivs),
	}
	b.logf("scale: %s, %d contenders: %s, %.0f requests (%.1f per action), at most %d at once, %.1f busy on average, CPU: agent %.1f s, contenders %.1f s",
		tool, k, fmtMS(pt.TotalMS), pt.Requests, pt.PerAction, pt.MaxConcurrent, pt.BusyAverage, pt.AgentCPU, pt.ContenderCPU)
	return pt, nil
}

func kbToMB(kb int64) float64 { return float64(kb) / 1024 }
