package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ct-supervise/internal/shell"
)

// The peak RSS of a short-lived child cannot be taken from the wait4
// rusage we get from os/exec: Go starts children with vfork semantics, the
// child shares our address space until it execs, and Linux folds that
// address space's high-water mark (the benchmark's own ~10 MB) into the
// child's ru_maxrss. GNU time forks from a ~1 MB process, so its %M is the
// child's own peak above a ~1 MB floor, which the no-op row shows.
const timeBin = "/usr/bin/time"

// peakRSS runs argv and returns its peak RSS in MB, and how it was taken.
func (b *bench) peakRSS(env []string, argv ...string) (float64, string, error) {
	if _, err := os.Stat(timeBin); err != nil {
		r, err := b.procs.runOnce(b.ctx, env, argv...)
		return kbToMB(r.MaxRSSKB), "wait4 ru_maxrss (over-reports: includes the benchmark's RSS at fork)", err
	}
	f, err := os.CreateTemp(b.tmp, "rss-")
	if err != nil {
		return 0, "", err
	}
	f.Close()
	defer os.Remove(f.Name())
	full := append([]string{timeBin, "-f", "%M", "-o", f.Name()}, argv...)
	if _, err := b.procs.runOnce(b.ctx, env, full...); err != nil {
		return 0, "", err
	}
	data, err := os.ReadFile(f.Name())
	if err != nil {
		return 0, "", err
	}
	// The last line is %M; a failing command would add a line before it.
	lines := strings.Fields(string(data))
	if len(lines) == 0 {
		return 0, "", fmt.Errorf("%s wrote nothing for %s", timeBin, argv[0])
	}
	kb, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%s output %q: %v", timeBin, data, err)
	}
	return kbToMB(kb), "GNU time %M (max RSS)", nil
}

// benchMemory measures peak RSS: register and the no-op binary, exec with
// the lock held elsewhere, the worker while it runs the action, and one
// lock holder of each tool running a 300 ms command.
func (b *bench) benchMemory(res *Results) error {
	const reps, holdReps = 10, 5
	b.logf("memory: peak RSS of register, exec, the worker and lock holders")
	dir, err := b.stateDir("memory")
	if err != nil {
		return err
	}
	env := b.env("CT_SUPERVISE_STATE_DIR=" + dir)
	var method string
	measure := func(n int, argv ...string) ([]float64, error) {
		var out []float64
		for range n {
			mb, how, err := b.peakRSS(env, argv...)
			if err != nil {
				return nil, err
			}
			method = how
			out = append(out, mb)
		}
		return out, nil
	}

	noop, err := measure(reps, append([]string{b.noop}, registerArgs...)...)
	if err != nil {
		return err
	}
	reg, err := measure(reps, append([]string{b.cts}, registerArgs...)...)
	if err != nil {
		return err
	}

	// exec, with the action's lock held by another session so that the
	// worker it starts stays waiting.
	const name = "bench-mem"
	ledger := filepath.Join(b.tmp, "memory.ledger")
	action := shell.Quote(b.stamp) + " " + shell.Quote(ledger) + " mem-$$ 300ms"
	release, err := hold(b.client, "ct-supervise/"+name, 1)
	if err != nil {
		return err
	}
	defer func() {
		if release != nil {
			_ = release()
		}
	}()
	if _, err := b.procs.runOnce(b.ctx, env, b.cts, "register", "-n=1", "-name="+name, "-try=10m", action); err != nil {
		return err
	}
	execMB, err := measure(reps, b.cts, "exec", name)
	if err != nil {
		return err
	}
	waitingMB := kbToMB(vmHWMKB(workerPID(dir)))
	rel := release
	release = nil
	if err := rel(); err != nil {
		return err
	}
	// Read the worker's high-water mark while its action runs.
	runningMB := 0.0
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(ledger); strings.Contains(string(data), " S ") {
			if pid := workerPID(dir); pid > 0 {
				runningMB = kbToMB(vmHWMKB(pid))
			}
			break
		}
		if err := sleepCtx(b.ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	if err := waitWorkersGone(b.ctx, []string{dir}, 30*time.Second); err != nil {
		return err
	}

	// One lock holder of each tool, alone on its prefix.
	holders := map[string][]float64{}
	for i := range holdReps {
		for _, tool := range toolOrder(i) {
			r := lockRound{tool: tool, name: fmt.Sprintf("mem-%s", short(tool)), prefix: "bench/memory/" + short(tool), limit: 1, sleep: 300 * time.Millisecond}
			mb, how, err := b.peakRSS(b.env(), b.argv(r, filepath.Join(b.tmp, "memory-holders.ledger"), i)...)
			if err != nil {
				return err
			}
			method = how
			holders[tool] = append(holders[tool], mb)
		}
	}

	n, r, e := summarize(noop, "MB"), summarize(reg, "MB"), summarize(execMB, "MB")
	res.add(Row{ID: "6", Measure: "peak RSS of `register`", N: fmt.Sprint(r.N), Value: &r,
		Baseline: "no-op Go binary", Base: &n, Target: "—"})
	res.add(Row{ID: "6", Measure: "peak RSS of `exec` (lock held elsewhere)", N: fmt.Sprint(e.N), Value: &e, Target: "—"})
	for _, w := range []struct {
		what string
		mb   float64
	}{
		{"waiting for the lock", waitingMB},
		{"running the action", runningMB},
	} {
		if w.mb <= 0 {
			continue
		}
		s := summarize([]float64{w.mb}, "MB")
		res.add(Row{ID: "6", Measure: "peak RSS of the worker " + w.what + " (VmHWM)", N: "1", Value: &s, Target: "—"})
	}
	c, base := summarize(holders[toolCTS], "MB"), summarize(holders[toolConsul], "MB")
	res.add(Row{ID: "6", Measure: "peak RSS of a lock holder running a 300 ms command (`run -n 1` / `consul lock -n=1`)",
		N: fmt.Sprintf("%d + %d", c.N, base.N), Value: &c, Baseline: "consul lock", Base: &base, Target: "—"})
	res.Details["memory_method"] = method
	res.Details["worker_vmhwm_mb_after_exec_benchmark"] = res.workerRSS
	return nil
}
