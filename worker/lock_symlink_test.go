package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"ct-supervise/state"
)

// The attack: a worker.lock symlink to a file that must not be written.
// Before O_NOFOLLOW, taking the worker lock truncated the file and wrote
// our pid into it.
func TestWorkerLockSymlinkIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	victim := filepath.Join(t.TempDir(), "shadow")
	const content = "root:secret:::\n"
	if err := os.WriteFile(victim, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, LockFile)); err != nil {
		t.Fatal(err)
	}

	lock, err := acquireInstanceLock(context.Background(), store, false)
	if err == nil {
		lock.release()
	}
	if !errors.Is(err, state.ErrUnsafeStateDir) {
		t.Errorf("acquireInstanceLock through a symlink: %v, want ErrUnsafeStateDir", err)
	}
	if _, err := RunningPID(store); !errors.Is(err, state.ErrUnsafeStateDir) {
		t.Errorf("RunningPID through a symlink: %v, want ErrUnsafeStateDir", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != content {
		t.Fatalf("the symlink's target was written: %q, %v", b, err)
	}
}
