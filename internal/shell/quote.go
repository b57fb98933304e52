// Package shell holds what the tests, the demo and the benchmarks need to
// write command lines for /bin/sh.
package shell

import "strings"

// Quote quotes s as one word for /bin/sh: in single quotes, where each
// single quote of s ends the quoting, is escaped, and starts it again.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
