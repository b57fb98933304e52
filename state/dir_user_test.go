package state

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A directory above the state directory that we may search but not read
// (mode 0711, as some service homes are) must not stop Open: resolving a
// path needs no more. Run as another user, since root reads everything.
func TestOpenThroughSearchOnlyParent(t *testing.T) {
	if dir := os.Getenv("CT_SUPERVISE_TEST_OPEN"); dir != "" {
		// The child, running as nobody.
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Register(decl(t, "a", "true"), time.Now()); err != nil {
			t.Fatal(err)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	const nobody = 65534
	for p := os.TempDir(); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("uid %d cannot reach %s (through %s)", nobody, os.TempDir(), p)
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	base := t.TempDir()
	// The test binary and the path to it must be open to nobody.
	for p := base; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(base, "state.test")
	copyFile(t, os.Args[0], bin, 0o755)
	parent := filepath.Join(base, "home")
	mkdirMode(t, parent, 0o711)
	dir := filepath.Join(parent, "state")
	mkdirMode(t, dir, 0o700)
	chown(t, dir, nobody)

	cmd := exec.Command(bin, "-test.run=^TestOpenThroughSearchOnlyParent$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CT_SUPERVISE_TEST_OPEN="+dir, "GOCOVERDIR="+base)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("Open as uid %d through a 0711 parent: %v\n%s", nobody, err, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
