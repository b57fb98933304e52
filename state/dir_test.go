package state

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The attack: with the worker waiting for its lock, someone renames the
// state directory away and puts one of theirs, with a planted action, in
// its place. The store opened before must go on reading its own directory.
func TestStoreSurvivesDirectorySwap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Register(decl(t, "nginx", "nginx -s reload"), time.Now()); err != nil {
		t.Fatal(err)
	}

	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	planted, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planted.Register(decl(t, "evil", "id > /tmp/pwned"), time.Now()); err != nil {
		t.Fatal(err)
	}
	planted.Close()

	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Actions["evil"]; ok || st.Actions["nginx"] == nil {
		t.Fatalf("after the swap the store reads the planted directory: actions %v", keys(st.Actions))
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// A state directory reached through a symlink could be re-pointed, by
// whoever owns the link, between two opens: refused.
func TestOpenRefusesSymlinkedStateDir(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	mkdirMode(t, real, 0o700)
	link := filepath.Join(base, "state")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	_, err := Open(link)
	if !errors.Is(err, ErrUnsafeStateDir) || !strings.Contains(err.Error(), "symbolic link") || !strings.Contains(err.Error(), link) {
		t.Fatalf("Open(symlink) = %v, want ErrUnsafeStateDir naming the symlink", err)
	}
}

// Symlinks above the state directory are followed where nobody else could
// re-point them (/var/run -> /run, macOS's /tmp).
func TestOpenFollowsSafeSymlinkAbove(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	mkdirMode(t, real, 0o700)
	if err := os.Symlink("real", filepath.Join(base, "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(base, "abs")); err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"rel", "abs"} {
		s, err := Open(filepath.Join(base, via, "state"))
		if err != nil {
			t.Fatalf("through %s: %v", via, err)
		}
		s.Close()
		if _, err := os.Stat(filepath.Join(real, "state")); err != nil {
			t.Fatalf("through %s: the directory was not made in the link's target: %v", via, err)
		}
	}
}

// Each parent of the state directory must be one nobody else can change.
func TestOpenRefusesUnsafeParents(t *testing.T) {
	const other = 4242
	cases := []struct {
		name    string
		rootly  bool // needs root to give things away
		setup   func(t *testing.T, parent string)
		mention string // "" means the open must succeed
	}{
		{name: "world-writable parent", setup: func(t *testing.T, p string) { mkdirMode(t, p, 0o777) }, mention: "writable by its group or by others"},
		{name: "group-writable parent", setup: func(t *testing.T, p string) { mkdirMode(t, p, 0o775) }, mention: "writable by its group or by others"},
		{name: "sticky shared parent, our entry", setup: func(t *testing.T, p string) { mkdirMode(t, p, os.ModeSticky|0o777) }},
		{name: "sticky shared parent, someone else's entry", rootly: true, setup: func(t *testing.T, p string) {
			mkdirMode(t, p, os.ModeSticky|0o777)
			mkdirMode(t, filepath.Join(p, "state"), 0o700)
			chown(t, filepath.Join(p, "state"), other)
		}, mention: "owned by uid 4242"},
		{name: "sticky shared parent, someone else's symlink", rootly: true, setup: func(t *testing.T, p string) {
			mkdirMode(t, p, os.ModeSticky|0o777)
			mkdirMode(t, p+".real", 0o700)
			mkdirMode(t, p+".real/state", 0o700)
			if err := os.Symlink(p+".real", filepath.Join(p, "via")); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(filepath.Join(p, "via"), other, other); err != nil {
				t.Fatal(err)
			}
		}, mention: "owned by uid 4242"},
		{name: "parent owned by someone else", rootly: true, setup: func(t *testing.T, p string) {
			mkdirMode(t, p, 0o755)
			chown(t, p, other)
		}, mention: "owned by uid 4242, neither root nor us"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rootly && os.Geteuid() != 0 {
				t.Skip("needs root to give files away")
			}
			parent := filepath.Join(t.TempDir(), "parent")
			tc.setup(t, parent)
			dir := filepath.Join(parent, "state")
			if strings.Contains(tc.name, "symlink") {
				dir = filepath.Join(parent, "via", "state")
			}
			s, err := Open(dir)
			if tc.mention == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				s.Close()
				return
			}
			if !errors.Is(err, ErrUnsafeStateDir) {
				t.Fatalf("Open: %v, want ErrUnsafeStateDir", err)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not name %s and %q", err, dir, tc.mention)
			}
		})
	}
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// OpenExisting (status) creates nothing.
func TestOpenExistingCreatesNothing(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "state")
	_, err := OpenExisting(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenExisting(missing) = %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(base, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenExisting created a directory: %v", err)
	}
}

// The attack: a symlink planted in place of one of our files, pointing at
// a file we must never write. Every file is opened without following it.
func TestFilesAreNotFollowedThroughSymlinks(t *testing.T) {
	for _, name := range []string{stateFileName, stateLockName} {
		t.Run(name, func(t *testing.T) {
			s := openTemp(t)
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte(`{"version": 1, "actions": {}}`), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, s.Path(name)); err != nil {
				t.Fatal(err)
			}
			_, err := s.Register(decl(t, "a", "true"), time.Now())
			if !errors.Is(err, ErrUnsafeStateDir) || !strings.Contains(err.Error(), name) {
				t.Fatalf("Register through a symlinked %s = %v, want ErrUnsafeStateDir naming it", name, err)
			}
			if _, err := s.Load(); !errors.Is(err, ErrUnsafeStateDir) {
				t.Fatalf("Load through a symlinked %s = %v, want ErrUnsafeStateDir", name, err)
			}
			if b, _ := os.ReadFile(victim); string(b) != `{"version": 1, "actions": {}}` {
				t.Fatalf("the symlink's target was written: %q", b)
			}
		})
	}
}
