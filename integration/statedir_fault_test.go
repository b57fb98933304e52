package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stateDirSize is the size of the tmpfs the state directory lives on in
// TestFaultStateDirectory: room for the state file and the worker log of
// a short test, and quick to fill.
const stateDirSize = "256k"

// mountStateDir mounts a size-limited tmpfs on the node's state directory
// and returns the functions that fill it up, make it read-only, and undo
// either. Where mounting is not permitted the test is skipped outside CI,
// and fails under CI=true. The mount goes when the test ends, after the
// node's worker is stopped.
func mountStateDir(t *testing.T, n *node) (fill, readOnly, restore func()) {
	t.Helper()
	dir := n.stateDir
	opts := "size=" + stateDirSize + ",mode=0700"
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs for the state directory (%v): needs root or CAP_SYS_ADMIN", err)
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (integration tests never skip under CI=true)", msg)
		}
		t.Skipf("skipping: %s", msg)
	}
	t.Cleanup(func() {
		n.stopWorker() // before its directory goes
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	filler := filepath.Join(dir, "filler")
	fill = func() {
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		block := make([]byte, 4096)
		for {
			if _, err := f.Write(block); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling the state directory: %v", err)
				}
				return
			}
		}
	}
	readOnly = func() {
		if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, opts); err != nil {
			t.Fatalf("remounting %s read-only: %v", dir, err)
		}
	}
	restore = func() {
		if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, opts); err != nil {
			t.Fatalf("remounting %s read-write: %v", dir, err)
		}
		if err := os.Remove(filler); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	return fill, readOnly, restore
}

// TestFaultStateDirectory: the state directory full, or read-only, while
// consul-template renders a change. register and exec fail loudly (the
// problem is in consul-template's log and on their stderr), the previous
// state stays intact, consul-template survives, and the change is applied
// once the directory is writable again.
func TestFaultStateDirectory(t *testing.T) {
	cases := []struct {
		fault string
		errno string // what the failures must name
	}{
		{"full", "no space left on device"},
		{"read-only", "read-only file system"},
	}
	for _, tc := range cases {
		t.Run(tc.fault, func(t *testing.T) {
			needConsulTemplate(t)
			act := newFaultAction(t)
			n := newNode(t, "node1")
			fill, readOnly, restore := mountStateDir(t, n)
			name := "statedir-" + strings.ReplaceAll(tc.fault, "-", "")
			key := "it/" + name + "/value"
			putKV(t, key, "v1")
			tmpl := rollTemplate(name, 1, key)(act.command(200*time.Millisecond, ""))
			p := startConsulTemplateOn(t, n, []ctTemplate{tmpl}, false)
			f := &fleet{t: t, nodes: []*ctNode{p}, ledger: act.ledger}
			f.waitRoll(0, "v1", 90*time.Second)

			statePath := filepath.Join(n.stateDir, "state.json")
			before := readFile(t, statePath)
			if tc.fault == "full" {
				fill()
			} else {
				readOnly()
			}
			logFrom := len(p.log())
			putKV(t, key, "v2")
			waitFor(t, 60*time.Second, "consul-template to render v2 and log the failure, or to exit", func() bool {
				return !p.running() || strings.Contains(p.readDest("upstreams"), "value=v2") && strings.Contains(p.log()[logFrom:], tc.errno)
			})
			time.Sleep(2 * time.Second) // an exit over the failure would come now
			survived := p.running()
			if !survived {
				code, _ := p.wait(0)
				t.Errorf("consul-template exited (status %d) over the %s state directory:\n%s", code, tc.fault, tail(p.log()[logFrom:], 2000))
			}
			if got := readFile(t, statePath); got != before {
				t.Errorf("state.json changed on a %s state directory:\nbefore: %s\nafter: %s", tc.fault, before, got)
			}
			// Both commands, run by hand, name the problem.
			for _, args := range [][]string{{"register", "-name=" + name, act.command(time.Second, "")}, {"exec", name}} {
				if r := n.run(args...); !strings.Contains(r.stderr, tc.errno) {
					t.Errorf("%s on a %s state directory: exit %d, stderr %q: the problem is not named", args[0], tc.fault, r.code, r.stderr)
				}
			}

			restore()
			if !survived {
				return
			}
			putKV(t, key, "v3")
			f.waitRoll(0, "v3", 90*time.Second)
			f.allRunning()
			act.checkNoOrphans(t.Errorf)
			act.checkLimit(1, t.Errorf)
			if left := sessionsNamed(t, "ct-supervise"); len(left) > 0 {
				t.Errorf("sessions left behind: %v", left)
			}
		})
	}
}
