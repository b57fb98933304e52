package devconsul

import (
	"fmt"
	"os"
)

// TB is the part of testing.TB that MissingOrFatal uses. Taking it rather
// than testing.TB keeps the testing package out of the demo and benchmark
// binaries that link this package.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// MissingOrFatal reports a failed start: a skip outside CI when the binary is
// simply absent, a test failure otherwise.
func MissingOrFatal(t TB, err error) {
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
