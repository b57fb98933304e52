package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// The two tools compared.
const (
	toolCTS    = "ct-supervise"
	toolConsul = "consul lock"
)

// short names a tool in prefixes and file names.
func short(tool string) string {
	if tool == toolCTS {
		return "cts"
	}
	return "consul"
}

// lockRound is one batch of contenders running the stamp command under one
// lock or semaphore.
type lockRound struct {
	tool    string
	name    string // session name tag, ledger and log file name
	prefix  string // KV prefix of the lock
	k       int    // contenders
	limit   int    // -n
	sleep   time.Duration
	preHold bool // hold every slot until all k contenders wait, then release
	timeout time.Duration
	count   bool // diff the agent's HTTP request counters around the round
}

// roundOut is what a round produced.
type roundOut struct {
	ivs []interval
	// wall is from the spawn of the first contender (with preHold: from the
	// release of the benchmark's hold) to the exit of the last.
	wall time.Duration
	// requests served by the agent during the round, the benchmark's own
	// taken out (only with count).
	requests   float64
	byEndpoint map[string]float64
	// CPU time used by the agent during the round (only with count) and by
	// the contenders themselves, in seconds.
	agentCPU, contenderCPU float64
}

// sessionName is the Consul session name the tool gives a contender.
func (r lockRound) sessionName() string {
	if r.tool == toolCTS {
		return "ct-supervise " + r.name
	}
	return r.name
}

// argv is contender i's command line. Neither tool goes through a shell,
// so the measurement is the lock's, not /bin/sh's.
func (b *bench) argv(r lockRound, ledger string, i int) []string {
	id := strconv.Itoa(i)
	if r.tool == toolCTS {
		return []string{b.cts, "run", "-n", strconv.Itoa(r.limit), "-name", r.name, "-prefix", r.prefix,
			"-shell=false", b.stamp, ledger, id, r.sleep.String()}
	}
	return []string{b.consul, "lock", "-n=" + strconv.Itoa(r.limit), "-name=" + r.name, "-shell=false",
		r.prefix, b.stamp, ledger, id, r.sleep.String()}
}

type exitInfo struct {
	i   int
	err error
	at  time.Time
	cpu time.Duration
}

// runRound starts r.k contenders at once and waits for all of them. Any
// contender failing, or the round running past its timeout, is an error
// (the caller aborts the benchmark, which stops what is left).
func (b *bench) runRound(r lockRound) (out roundOut, err error) {
	ledger := filepath.Join(b.tmp, r.name+".ledger")
	logPath := filepath.Join(b.tmp, r.name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return out, err
	}
	defer logf.Close()
	fail := func(format string, a ...any) error {
		msg := fmt.Sprintf(format, a...)
		if tail := fileTail(logPath, 600); tail != "" {
			msg += "; contender output: " + tail
		}
		return fmt.Errorf("%s (%s, %d contenders, n=%d): %s", r.tool, r.name, r.k, r.limit, msg)
	}

	var release func() error
	if r.preHold {
		if release, err = hold(b.client, r.prefix, r.limit); err != nil {
			return out, err
		}
		defer func() {
			if release != nil {
				_ = release()
			}
		}()
	}
	var before map[string]float64
	var ownBefore int64
	var cpuBefore float64
	if r.count {
		if before, err = httpCounts(b.ctx, b.agent.Addr()); err != nil {
			return out, err
		}
		ownBefore = b.ownReq.Load()
		cpuBefore = procCPUSeconds(b.agentPID)
	}

	env := b.env()
	exits := make(chan exitInfo, r.k)
	t0 := time.Now()
	for i := range r.k {
		argv := b.argv(r, ledger, i)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := b.procs.start(cmd); err != nil {
			return out, fail("starting contender %d: %v", i, err)
		}
		go func() {
			err := b.procs.wait(cmd)
			exits <- exitInfo{i: i, err: err, at: time.Now(), cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
		}()
	}

	var early []exitInfo
	if r.preHold {
		// Wait until every contender has its session, then a little longer
		// so that each is parked in its blocking query, then let go.
		name := r.sessionName()
		deadline := time.Now().Add(r.timeout)
		for {
			n, err := countSessions(b.client, name)
			if err != nil {
				return out, err
			}
			if n >= r.k {
				break
			}
			select {
			case e := <-exits:
				early = append(early, e)
				return out, fail("contender %d exited before the lock was released: %v", e.i, e.err)
			default:
			}
			if time.Now().After(deadline) {
				return out, fail("only %d of %d contenders waiting after %s", n, r.k, r.timeout)
			}
			if err := sleepCtx(b.ctx, 20*time.Millisecond); err != nil {
				return out, err
			}
		}
		if err := sleepCtx(b.ctx, 200*time.Millisecond+time.Duration(r.k)*4*time.Millisecond); err != nil {
			return out, err
		}
		t0 = time.Now()
		rel := release
		release = nil
		if err := rel(); err != nil {
			return out, fmt.Errorf("releasing the benchmark's hold on %s: %w", r.prefix, err)
		}
	}

	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	var last time.Time
	for got := len(early); got < r.k; got++ {
		select {
		case e := <-exits:
			if e.err != nil {
				return out, fail("contender %d: %v", e.i, e.err)
			}
			out.contenderCPU += e.cpu.Seconds()
			if e.at.After(last) {
				last = e.at
			}
		case <-timer.C:
			return out, fail("%d of %d contenders still running after %s", r.k-got, r.k, r.timeout)
		case <-b.ctx.Done():
			return out, b.ctx.Err()
		}
	}
	out.wall = last.Sub(t0)

	if r.count {
		// Wake any blocking query a contender left behind on the prefix (the
		// agent only counts a request once it has answered it), tidy up,
		// then read the counters again.
		if _, err := b.client.KV().DeleteTree(r.prefix+"/", nil); err != nil {
			return out, err
		}
		if err := sleepCtx(b.ctx, 500*time.Millisecond); err != nil {
			return out, err
		}
		after, err := httpCounts(b.ctx, b.agent.Addr())
		if err != nil {
			return out, err
		}
		var total float64
		out.byEndpoint, total = diffCounts(before, after)
		out.requests = total - float64(b.ownReq.Load()-ownBefore)
		out.agentCPU = procCPUSeconds(b.agentPID) - cpuBefore
	}

	if out.ivs, err = readLedger(ledger); err != nil {
		return out, err
	}
	if len(out.ivs) != r.k {
		return out, fail("%d of %d contenders ran their command", len(out.ivs), r.k)
	}
	return out, nil
}

// fileTail returns up to n bytes of the end of a file, on one line.
func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(bytes.Join(bytes.Fields(data), []byte(" ")))
}
