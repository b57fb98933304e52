package shell

import (
	"os/exec"
	"testing"
)

// Whatever the word, sh reads it back unchanged.
func TestQuoteRoundTrips(t *testing.T) {
	for _, s := range []string{"", "plain", "two words", "it's", `'`, `a'b'c`, `$HOME "x" \n`, "*", "new\nline"} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+Quote(s)).Output()
		if err != nil {
			t.Fatalf("sh: %v", err)
		}
		if string(out) != s {
			t.Errorf("Quote(%q) read back as %q", s, out)
		}
	}
}
