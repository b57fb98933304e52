package plugin

import (
	"slices"
	"strings"
	"testing"
)

// argsSeparator splits a fuzz input into arguments: a real argument
// vector cannot hold a NUL byte.
const argsSeparator = "\x00"

// FuzzParseArgs feeds register's argument parser (Parse, Resolve and the
// data it hands on) arbitrary command lines. Beyond not panicking and
// one-line errors, it checks the property the data flags are designed for:
// data missing (an empty -policy= or -json= value, as consul-template
// passes while it has not fetched the key) never changes what the template
// declares, so it can never shift a template's flag or command into data.
func FuzzParseArgs(f *testing.F) {
	for _, seed := range [][]string{
		{"-n=2", "-name=nginx", "-try=10m", "nginx -s reload"},
		{"-name=nginx", `-policy={"n":2,"timeout":"5m"}`, "nginx -s reload"},
		{"-name=nginx", "-policy=", "nginx -s reload"},
		{"-name=nginx", "-policy=-output=INJECTED", "true"},
		{"-name=nginx", "-policy", "-name=a", "true"},
		{"-allow-data-commands", `-json={"name":"a","command":["printf","%s|"," a ","","b"]}`},
		{`-json={"name":"a","command":"id"}`},
		{"-json="},
		{`{"name":"a","command":"x"}`},
		{"null"},
		{"-shell", "false", "echo x"},
		{"-shell=false", "printf", "%s|", " a ", "", "b"},
		{"-strict", "-n=2", "-name=nginx"},
		{"-name=x", "[ -x /usr/sbin/nginx ] && nginx -s reload"},
		{"-name=x", "--", "-json"},
		{"-try=5", "x"},
		{"-timeout=1m", "-try=1m", "x"},
		{"stauts"},
	} {
		f.Add(strings.Join(seed, argsSeparator))
	}
	f.Fuzz(func(t *testing.T, in string) {
		var args []string
		if in != "" {
			args = strings.Split(in, argsSeparator)
		}
		req, err := resolve(args...)
		if err != nil {
			checkOneLine(t, err)
			return
		}
		switch req.Source {
		case SourceTemplate, SourcePolicy:
			again := req.Template
			again.Command = slices.Clone(req.Template.Command)
			if err := again.Finish(); err != nil || !again.Equal(req.Template) {
				t.Fatalf("resolve %q: template %+v is not finished (%v)", args, req.Template, err)
			}
			if len(req.Template.Command) > 1 && !slices.Equal(req.Template.Command, args[len(args)-len(req.Template.Command):]) {
				t.Fatalf("resolve %q: argument vector %q is not the arguments as given", args, req.Template.Command)
			}
		}
		if req.Source == SourcePolicy {
			merged, err := req.Template.WithPolicy(req.Data, req.AllowDataCommands)
			if err != nil {
				checkOneLine(t, err)
			} else if merged.Name != req.Template.Name || !req.AllowDataCommands && !slices.Equal(merged.Command, req.Template.Command) {
				t.Fatalf("resolve %q: policy %q changed the name or, without the opt-in, the command: %+v", args, req.Data, merged)
			}
		}
		if req.Source == SourceData {
			if _, _, err := ParseData(req.Data, req.AllowDataCommands); err != nil {
				checkOneLine(t, err)
			}
		}

		// The same line with its data missing.
		missing := slices.Clone(args)
		emptied := false
		for i, a := range missing {
			if a == "--" || !strings.HasPrefix(a, "-") {
				break
			}
			if name, _, ok := strings.Cut(strings.TrimLeft(a, "-"), "="); ok && (name == JSONFlag || name == PolicyFlag) {
				missing[i] = "-" + name + "="
				emptied = true
			}
		}
		if !emptied {
			return
		}
		without, err := resolve(missing...)
		switch {
		case err != nil:
			t.Fatalf("resolve %q works, but fails with its data missing (%q): %v", args, missing, err)
		case req.Source == SourcePolicy && (without.Source != SourcePolicy || !without.Template.Equal(req.Template)):
			t.Fatalf("resolve %q: with the policy missing the template changed: %+v, want %+v", args, without, req)
		case req.Source == SourceData && without.Source != SourceNone:
			t.Fatalf("resolve %q: with the -json data missing, %+v is not a no-op", args, without)
		}
	})
}
