package plugin

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

// parseDeclarationFlags parses argv the way `register` does: the
// declaration flags (those of `run` and the queue's), then the command.
func parseDeclarationFlags(argv []string) (Declaration, *flag.FlagSet, error) {
	d := DefaultDeclaration()
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	d.BindFlags(fs)
	d.BindQueueFlags(fs)
	if err := fs.Parse(argv); err != nil {
		return Declaration{}, nil, err
	}
	d.Command = fs.Args()
	return d, fs, d.Finish()
}

// FuzzDeclarationFlags feeds argument vectors (NUL-separated) through the
// declaration flags and Finish. A declaration that parses must finish to
// itself, and must come back equal from the command line that writes it
// out again (every flag given, as -flag=value, then --, then the command):
// the flags are a faithful language for declarations, whatever the input.
// A rejected one gets a one-line error wrapping ErrInvalidDeclaration.
func FuzzDeclarationFlags(f *testing.F) {
	seeds := []string{
		"-n=2\x00-name=nginx\x00nginx -s reload",
		"-n\x002\x00-try=10m\x00-timeout=1h\x00-prefix=ops/x\x00x",
		"-shell=false\x00systemctl\x00reload\x00nginx",
		"-shell\x00false\x00echo x",
		"-max-attempts=3\x00-monitor-retry=0\x00true",
		"--\x00-n=2",
		"-n=0\x00x",
		"-n=-1\x00x",
		"-try=-1s\x00x",
		"-try=1\x00x",
		"-name=a b\x00x",
		"-name=\x00x",
		"-prefix=/abs\x00x",
		"-prefix=a//b\x00x",
		"-prefix=a/./b\x00x",
		"x\x00 \x00\x00y",
		"",
		"\x00",
		"-n=99999999999999999999\x00x",
		"-name=" + strings.Repeat("a", 300) + "\x00x",
		"\xff\xfe",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		argv := strings.Split(in, "\x00")
		d, fs, err := parseDeclarationFlags(argv)
		if fs == nil {
			return // the flag package's own error: the CLI reports it as usage
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidDeclaration) {
				t.Fatalf("%q: error %q does not wrap ErrInvalidDeclaration", argv, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("%q: error is not one line: %q", argv, err)
			}
			return
		}

		again := d
		again.Command = append([]string(nil), d.Command...)
		if err := again.Finish(); err != nil || !again.Equal(d) {
			t.Fatalf("%q: %+v does not finish to itself: %+v (%v)", argv, d, again, err)
		}

		var back []string
		fs.Visit(func(fl *flag.Flag) { back = append(back, "-"+fl.Name+"="+fl.Value.String()) })
		back = append(append(back, "--"), d.Command...)
		d2, fs2, err := parseDeclarationFlags(back)
		if fs2 == nil || err != nil {
			t.Fatalf("%q parsed to %+v, but its own command line %q does not parse: %v", argv, d, back, err)
		}
		if !d2.Equal(d) {
			t.Fatalf("%q parsed to\n %+v\nits own command line %q to\n %+v", argv, d, back, d2)
		}
	})
}
