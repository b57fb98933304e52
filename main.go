// Command ct-supervise runs reload and restart commands under a Consul lock
// or semaphore, so that a fleet of consul-template nodes rolls a change out
// a few nodes at a time instead of all at once.
package main

import "os"

func main() {
	os.Exit(NewCLI(os.Stdout, os.Stderr, os.Stdin).Run(os.Args[1:]))
}
