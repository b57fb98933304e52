package devconsul

import (
	"fmt"
	"os"
	"testing"
)

// ForTest starts an agent for one test and stops it when the test ends, even
// on failure. Without a consul binary it fails the test under CI=true and
// skips it, with a message saying how to get one, elsewhere.
func ForTest(t testing.TB) *Agent {
	t.Helper()
	a, err := Start(Options{})
	if err != nil {
		MissingOrFatal(t, err)
	}
	t.Cleanup(a.Stop)
	return a
}

// MissingOrFatal reports a failed start: a skip outside CI when the binary is
// simply absent, a test failure otherwise.
func MissingOrFatal(t testing.TB, err error) {
	t.Helper()
	if err == ErrNoBinary && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v (integration tests never skip under CI=true)", err)
	}
	t.Fatalf("starting consul: %v", err)
}

// MainAgent starts one agent for a whole test package from TestMain. It
// returns the agent and a stop function; a nil agent with a nil error means
// "no binary, not in CI": the caller should let tests skip.
func MainAgent() (*Agent, error) {
	a, err := Start(Options{})
	if err == ErrNoBinary && os.Getenv("CI") != "true" {
		fmt.Fprintf(os.Stderr, "devconsul: %v; integration tests in this package will skip\n", err)
		return nil, nil
	}
	return a, err
}
