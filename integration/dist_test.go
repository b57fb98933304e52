package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests check `make dist` (scripts/dist.sh) and the version stamping
// (scripts/version.sh) as a release manager runs them. Building all four
// platforms takes minutes on two cores, so the reproducibility test builds
// the host's platform only: the build flags are the same for all four.

// repoRoot is the checkout under test.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// script runs a bash command line in dir with extra environment and returns
// its standard output; it fails the test on a non-zero exit.
func script(t *testing.T, dir string, env []string, line string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", line)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s", line, err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// TestDistReproducible builds the host's release twice, in different
// output directories, time zones and umasks, a second or more apart, and
// checks that both give byte-identical files, that `sha256sum -c` accepts
// SHA256SUMS, and that the result is what the README's install steps expect.
func TestDistReproducible(t *testing.T) {
	root := repoRoot(t)
	platform := runtime.GOOS + "/" + runtime.GOARCH
	version := script(t, root, nil, "scripts/version.sh version")
	commit := script(t, root, nil, "scripts/version.sh commit")
	epoch := script(t, root, nil, "scripts/version.sh epoch")
	name := "ct-supervise_" + version + "_" + runtime.GOOS + "_" + runtime.GOARCH

	build := func(umask, tz string) string {
		out := t.TempDir()
		script(t, root, []string{"DIST_PLATFORMS=" + platform, "DIST_DIR=" + out, "TZ=" + tz},
			"umask "+umask+" && scripts/dist.sh")
		return out
	}
	first := build("022", "UTC")
	time.Sleep(1100 * time.Millisecond) // any timestamp that leaks differs
	second := build("077", "Asia/Tokyo")

	sums1, err := os.ReadFile(filepath.Join(first, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sums2, err := os.ReadFile(filepath.Join(second, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sums1, sums2) {
		t.Fatalf("two builds of the same commit differ:\nfirst:\n%s\nsecond:\n%s", sums1, sums2)
	}
	for _, want := range []string{"  " + name + "\n", "  " + name + ".tar.gz\n"} {
		if !strings.Contains(string(sums1), want) {
			t.Errorf("SHA256SUMS does not list %q:\n%s", strings.TrimSpace(want), sums1)
		}
	}
	script(t, first, nil, "sha256sum -c --strict SHA256SUMS")

	bin, err := os.ReadFile(filepath.Join(first, name))
	if err != nil {
		t.Fatal(err)
	}
	checkArchive(t, filepath.Join(first, name+".tar.gz"), bin, epoch)
	if bytes.Contains(bin, []byte(root)) {
		t.Errorf("the binary contains the checkout's path %s: built without -trimpath?", root)
	}
	if runtime.GOOS == "linux" {
		checkStatic(t, filepath.Join(first, name))
	}

	got := script(t, root, nil, filepath.Join(first, name)+" version")
	want := "ct-supervise v" + version + " (commit " + commit + ", " + runtime.Version() + ", " + platform + ")"
	if got != want {
		t.Errorf("version: got  %q\nwant %q", got, want)
	}
}

// checkArchive checks that the archive holds exactly an executable
// ct-supervise identical to bin, owned by root, dated the commit time.
func checkArchive(t *testing.T, path string, bin []byte, epoch string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if gz.Name != "" || !gz.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q and time %v: want neither", gz.Name, gz.ModTime)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 || strconv.FormatInt(h.ModTime.Unix(), 10) != epoch {
			t.Errorf("%s: mode %o, owner %d:%d, time %d; want 755, 0:0, %s", h.Name, h.Mode, h.Uid, h.Gid, h.ModTime.Unix(), epoch)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(content, bin) {
			t.Errorf("%s in the archive differs from the binary beside it", h.Name)
		}
	}
	if strings.Join(names, " ") != "ct-supervise" {
		t.Errorf("archive holds %q, want just ct-supervise (the name consul-template's plugin call looks up)", names)
	}
}

// checkStatic fails unless the ELF binary needs no dynamic loader.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not static (CGO_ENABLED=0?)", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s links %v: not static", path, libs)
	}
}

// TestVersionFromGit checks the version a checkout is stamped with, in a
// scratch repository holding a copy of scripts/version.sh: a dev version
// naming the commit before any tag, the tag itself on a tagged commit, git
// describe's form after it, and a dirty mark while tracked files differ.
func TestVersionFromGit(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts", "version.sh"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "scripts", "version.sh"), src, 0o755); err != nil {
		t.Fatal(err)
	}
	// No user or system git configuration (signing, hooks, default branch).
	gitEnv := []string{"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com",
		"GIT_AUTHOR_DATE=@1700000000 +0000", "GIT_COMMITTER_DATE=@1700000000 +0000",
		"CT_SUPERVISE_VERSION=", "CT_SUPERVISE_COMMIT=", "SOURCE_DATE_EPOCH="}
	git := func(line string) string { return script(t, dir, gitEnv, line) }
	hex := func(n int) string { return "[0-9a-f]{" + strconv.Itoa(n) + "}" }

	// Outside git the build still works, as 0.0.0-dev of an unknown commit.
	if got := git("scripts/version.sh ldflags 2>/dev/null"); got != "-X main.Version=0.0.0-dev -X main.Commit=unknown" {
		t.Errorf("outside git: ldflags %q", got)
	}
	git("git init -q && git add . && git commit -q -m one")
	head := git("git rev-parse HEAD")

	for _, step := range []struct {
		what     string
		setup    string
		version  string // a regular expression
		commit   string // a regular expression
		fromEnv  []string
		wantEpch string
	}{
		{what: "no tag", version: `0\.0\.0-dev\+` + head[:12], commit: head},
		{what: "a non-release tag is not a version", setup: "git tag nightly", version: `0\.0\.0-dev\+` + head[:12], commit: head},
		{what: "tagged", setup: "git tag v1.2.3", version: `1\.2\.3`, commit: head},
		{what: "dirty", setup: "echo '# edited' >> scripts/version.sh", version: `1\.2\.3\+dirty`, commit: head + "-dirty"},
		{what: "after the tag", setup: "git commit -q -am two", version: `1\.2\.3-1-g` + hex(12), commit: hex(40)},
		{what: "dirty dev build", setup: "git tag -d v1.2.3 >/dev/null && echo '# again' >> scripts/version.sh",
			version: `0\.0\.0-dev\+` + hex(12) + `\.dirty`, commit: hex(40) + "-dirty"},
		{what: "a source archive's environment wins", version: `2\.0\.0`, commit: "abc",
			fromEnv: []string{"CT_SUPERVISE_VERSION=v2.0.0", "CT_SUPERVISE_COMMIT=abc", "SOURCE_DATE_EPOCH=42"}, wantEpch: "42"},
	} {
		if step.setup != "" {
			git(step.setup)
		}
		env := append(append([]string{}, gitEnv...), step.fromEnv...)
		got := script(t, dir, env, "scripts/version.sh version; scripts/version.sh commit; scripts/version.sh epoch")
		want := regexp.MustCompile("^" + step.version + "\n" + step.commit + "\n" + "[0-9]+$")
		if !want.MatchString(got) {
			t.Errorf("%s: version, commit and epoch\n%s\ndo not match\n%s", step.what, got, want)
		}
		epoch := "1700000000"
		if step.wantEpch != "" {
			epoch = step.wantEpch
		}
		if !strings.HasSuffix(got, "\n"+epoch) {
			t.Errorf("%s: epoch is not %s:\n%s", step.what, epoch, got)
		}
	}

	// A source archive unpacked inside some other repository is not that
	// repository's commit.
	git("mkdir -p unpacked/scripts && cp scripts/version.sh unpacked/scripts/")
	if got := git("unpacked/scripts/version.sh ldflags 2>/dev/null"); got != "-X main.Version=0.0.0-dev -X main.Commit=unknown" {
		t.Errorf("inside another repository: ldflags %q", got)
	}
}
