package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// skipProbeEnv marks the child run of TestSkipsCleanlyWithoutConsul, so
// that the child does not start another one.
const skipProbeEnv = "CT_SUPERVISE_IT_SKIP_PROBE"

// TestSkipsCleanlyWithoutConsul runs this package's tests again with no
// consul and no consul-template on PATH and CI unset, as a developer
// without the tools would: every test must skip or pass, and none may
// panic on the missing agent. (Under CI=true the same run must fail
// instead; needConsul and devconsul.MissingOrFatal see to that.)
func TestSkipsCleanlyWithoutConsul(t *testing.T) {
	if os.Getenv(skipProbeEnv) != "" {
		t.Skip("this is the probe run itself")
	}
	if testing.Short() {
		t.Skip("re-runs the whole package; not in -short")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.count=1", "-test.v")
	cmd.Env = append(envWithout(os.Environ(), "PATH", "CI", "CONSUL_BIN", "CONSUL_HTTP_ADDR"),
		"PATH="+pathWithout("consul", "consul-template"),
		skipProbeEnv+"=1")
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil || strings.Contains(text, "panic:") || strings.Contains(text, "--- FAIL") {
		t.Fatalf("without consul on PATH the tests did not skip cleanly (%v):\n%s", err, tail(text, ctLogTail))
	}
	if !strings.Contains(text, "--- SKIP") {
		t.Fatalf("without consul on PATH no test skipped:\n%s", tail(text, ctLogTail))
	}
}

// envWithout returns env without the named variables.
func envWithout(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, n := range names {
			if name == n {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// pathWithout returns $PATH without the directories that hold any of the
// named executables.
func pathWithout(bins ...string) string {
	var keep []string
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		holds := false
		for _, b := range bins {
			if fi, err := os.Stat(filepath.Join(dir, b)); err == nil && !fi.IsDir() {
				holds = true
			}
		}
		if !holds {
			keep = append(keep, dir)
		}
	}
	return strings.Join(keep, string(os.PathListSeparator))
}
