package lockexec

import (
	"os/exec"
	"slices"
	"testing"
)

// TestArgvRunsExactly runs each command line that argv builds, for real,
// and checks what the program received: an argument vector must reach it
// exactly as given, shell or not, with no element read as shell syntax.
func TestArgvRunsExactly(t *testing.T) {
	cases := []struct {
		name    string
		command []string
		shell   bool
		want    string
	}{
		{"argv, no shell", []string{"printf", "%s|", " a ", "", "b"}, false, " a ||b|"},
		{"argv, shell", []string{"printf", "%s|", " a ", "", "b"}, true, " a ||b|"},
		{"argv, shell, metacharacters stay words", []string{"printf", "%s|", "a; echo INJECTED", "$(echo X)", "`echo Y`", "it's", "*"}, true,
			"a; echo INJECTED|$(echo X)|`echo Y`|it's|*|"},
		{"command line, shell", []string{"printf '%s|' a b; printf c"}, true, "a|b|c"},
		{"command line, no shell, split on spaces", []string{"  printf   %s|   a  b "}, false, "a|b|"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Command: tc.command, Shell: tc.shell}
			argv := o.argv()
			if len(argv) == 0 {
				t.Fatalf("argv(%q) is empty", tc.command)
			}
			out, err := exec.Command(argv[0], argv[1:]...).Output()
			if err != nil {
				t.Fatalf("running %q: %v", argv, err)
			}
			if string(out) != tc.want {
				t.Fatalf("%q (shell %t) ran as %q and printed %q, want %q", tc.command, tc.shell, argv, out, tc.want)
			}
		})
	}
}

func TestArgvBlank(t *testing.T) {
	for _, cmd := range [][]string{nil, {""}, {"  \t"}, {"", "x"}, {" ", ""}} {
		for _, shell := range []bool{false, true} {
			o := Options{Command: cmd, Shell: shell}
			if argv := o.argv(); len(argv) != 0 {
				t.Errorf("argv(%q, shell %t) = %q, want nil (nothing to run)", cmd, shell, argv)
			}
		}
	}
	o := Options{Command: []string{"printf", "%s"}}
	if argv := o.argv(); !slices.Equal(argv, o.Command) {
		t.Errorf("argv without shell = %q, want the command itself", argv)
	}
}
