package main

import (
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"ct-supervise/plugin"
	"ct-supervise/state"
)

func TestLedgerHandoffsAndConcurrency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	data := "a S 100\nb S 1200\na E 1000\nc S 2500\nb E 2000\nc E 3000\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	ivs, err := readLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ivs) != 3 || ivs[0].ID != "a" || ivs[2].ID != "c" {
		t.Fatalf("intervals = %+v", ivs)
	}
	gaps, err := handoffs(ivs)
	if err != nil {
		t.Fatal(err)
	}
	if len(gaps) != 2 || gaps[0] != ms(200) || gaps[1] != ms(500) {
		t.Fatalf("gaps = %v", gaps)
	}
	if got := maxConcurrent(ivs); got != 1 {
		t.Fatalf("maxConcurrent = %d, want 1", got)
	}
	if got := span(ivs); got != 2900 {
		t.Fatalf("span = %d, want 2900", got)
	}

	overlapping := []interval{{"a", 0, 100}, {"b", 50, 150}, {"c", 60, 70}}
	if _, err := handoffs(overlapping); err == nil {
		t.Fatal("overlapping runs under a lock were not reported")
	}
	if got := maxConcurrent(overlapping); got != 3 {
		t.Fatalf("maxConcurrent = %d, want 3", got)
	}
}

func TestLedgerRejectsIncompleteRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	if err := os.WriteFile(path, []byte("a S 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readLedger(path); err == nil {
		t.Fatal("a run without an end was accepted")
	}
}

func TestSummarize(t *testing.T) {
	xs := make([]float64, 0, 200)
	for i := 200; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	s := summarize(xs, "ms")
	if s.N != 200 || s.Median != 100.5 || s.P99 != 198 || s.Min != 1 || s.Max != 200 {
		t.Fatalf("summary = %+v", s)
	}
	if one := summarize([]float64{7}, "ms"); one.Median != 7 || one.P99 != 7 {
		t.Fatalf("single sample summary = %+v", one)
	}
}

func TestParseLabels(t *testing.T) {
	m := parseLabels(`method="GET",path="v1_kv_"`)
	if m["method"] != "GET" || m["path"] != "v1_kv_" {
		t.Fatalf("labels = %v", m)
	}
}

// The benchmarks below complement `make bench`. The first two exec real
// binaries, built once into a temporary directory:
//
//	go test -run '^$' -bench . ./internal/bench/

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds ct-supervise and the no-op helper once per test process.
func binaries(b *testing.B) (cts, noop string) {
	b.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ct-supervise-benchtest-")
		if buildErr != nil {
			return
		}
		for pkg, out := range map[string]string{"ct-supervise": "ct-supervise", "ct-supervise/internal/bench/noop": "noop"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, out), pkg)
			cmd.Stderr = os.Stderr
			if buildErr = cmd.Run(); buildErr != nil {
				return
			}
		}
	})
	if buildErr != nil {
		b.Fatalf("building: %v", buildErr)
	}
	return filepath.Join(buildDir, "ct-supervise"), filepath.Join(buildDir, "noop")
}

// benchExec forks, execs and reaps bin with register's arguments, as
// consul-template does for a plugin call.
func benchExec(b *testing.B, bin string) {
	env := append(os.Environ(), "CT_SUPERVISE_STATE_DIR="+b.TempDir())
	args := []string{"register", "-n=2", "-name=nginx", "-try=10m", "nginx -s reload"}
	b.ResetTimer()
	for b.Loop() {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRegisterExec is one `ct-supervise register` call, fork to reap.
func BenchmarkRegisterExec(b *testing.B) {
	cts, _ := binaries(b)
	benchExec(b, cts)
}

// BenchmarkNoopExec is the same for a Go binary that does nothing: the
// floor of BenchmarkRegisterExec.
func BenchmarkNoopExec(b *testing.B) {
	_, noop := binaries(b)
	benchExec(b, noop)
}

// BenchmarkRegisterInProcess is register's own work without process
// start-up: parse the flags into a declaration and register it, unchanged,
// in the state directory.
func BenchmarkRegisterInProcess(b *testing.B) {
	store, err := state.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"-n=2", "-name=nginx", "-try=10m", "nginx -s reload"}
	now := time.Now()
	for b.Loop() {
		fs := flag.NewFlagSet("register", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		d := plugin.DefaultDeclaration()
		d.BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			b.Fatal(err)
		}
		d.Command = fs.Args()
		if err := d.Finish(); err != nil {
			b.Fatal(err)
		}
		if _, err := store.Register(d, now); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBusyAverage(t *testing.T) {
	tests := []struct {
		name string
		ivs  []interval
		want float64
	}{
		{"none", nil, 0},
		{"one run", []interval{{"a", 0, 100}}, 1},
		{"two side by side", []interval{{"a", 0, 100}, {"b", 0, 100}}, 2},
		{"a gap between two", []interval{{"a", 0, 100}, {"b", 300, 400}}, 0.5},
		{"staggered", []interval{{"a", 0, 100}, {"b", 50, 150}, {"c", 100, 200}}, 1.5},
	}
	for _, tt := range tests {
		if got := busyAverage(tt.ivs); got != tt.want {
			t.Errorf("%s: busyAverage = %v, want %v", tt.name, got, tt.want)
		}
	}
}
