package devconsul

import (
	"fmt"
	"os"

	"github.com/hashicorp/consul/api"
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

// MainAgent starts one agent for a whole test package from TestMain (see
// RunPackage); the caller stops it. A nil agent with a nil error means "no
// binary, not in CI": the caller should let tests skip.
func MainAgent() (*Agent, error) {
	a, err := Start(Options{})
	if err == ErrNoBinary && os.Getenv("CI") != "true" {
		fmt.Fprintf(os.Stderr, "devconsul: %v; integration tests in this package will skip\n", err)
		return nil, nil
	}
	return a, err
}

// TestingM is the part of *testing.M that RunPackage uses, for the same
// reason as TB.
type TestingM interface {
	Run() int
}

// RunPackage is the body of a test package's TestMain: it starts the
// package's one agent with MainAgent, points *shared at it (nil when the
// tests are to skip), runs the tests and stops the agent. It returns the
// exit code for os.Exit.
func RunPackage(m TestingM, shared **Agent) int {
	a, err := MainAgent()
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting consul: %v\n", err)
		return 1
	}
	*shared = a
	if a != nil {
		defer a.Stop()
	}
	return m.Run()
}

// SharedClient returns a client for a, the agent RunPackage started. A nil
// a means there is no consul binary: the test skips outside CI and fails
// under CI=true, as MissingOrFatal says.
func SharedClient(t TB, a *Agent) *api.Client {
	t.Helper()
	if a == nil {
		MissingOrFatal(t, ErrNoBinary)
	}
	c, err := a.Client()
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}
