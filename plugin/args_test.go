package plugin

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// resolve is what `register` does with its command line, with one flag of
// its own (-strict) to show that those are not declaration flags.
func resolve(args ...string) (Request, error) {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a := BindArgs(fs)
	fs.Bool("strict", false, "")
	if err := a.Parse(args); err != nil {
		return Request{}, err
	}
	return a.Resolve()
}

func TestResolveGood(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		source Source
		data   string
		bare   bool
		cmd    []string
	}{
		{"nothing", nil, SourceNone, "", false, nil},
		{"blank argument", []string{"  "}, SourceNone, "", false, nil},
		{"own flag only", []string{"-strict"}, SourceNone, "", false, nil},
		{"opt-in only", []string{"-allow-data-commands"}, SourceNone, "", false, nil},
		{"empty -json", []string{"-json="}, SourceNone, "", false, nil},
		{"blank -json", []string{"-json= \n"}, SourceNone, "", false, nil},
		{"-json", []string{`-json= {"name":"x"} `}, SourceData, `{"name":"x"}`, false, nil},
		{"--json", []string{`--json={"name":"x"}`}, SourceData, `{"name":"x"}`, false, nil},
		{"bare object", []string{`{"name":"x"}`}, SourceData, `{"name":"x"}`, true, nil},
		{"bare array", []string{`["id"]`}, SourceData, `["id"]`, true, nil},
		{"bare null", []string{"null"}, SourceData, "null", true, nil},
		{"bare lines", []string{"a: b\nc: d"}, SourceData, "a: b\nc: d", true, nil},
		{"command", []string{"nginx -s reload"}, SourceTemplate, "", false, []string{"nginx -s reload"}},
		{"brace group after a flag", []string{"-name=x", "{ a; b; }"}, SourceTemplate, "", false, []string{"{ a; b; }"}},
		{"test after a flag", []string{"-n=2", "[ -x /x ] && x"}, SourceTemplate, "", false, []string{"[ -x /x ] && x"}},
		{"lines after a flag", []string{"-n=2", "a\nb"}, SourceTemplate, "", false, []string{"a\nb"}},
		{"argv", []string{"-shell=false", "printf", "%s|", " a ", "", "b"}, SourceTemplate, "", false, []string{"printf", "%s|", " a ", "", "b"}},
		{"command after --", []string{"-name=x", "--", "-json"}, SourceTemplate, "", false, []string{"-json"}},
		{"policy", []string{"-name=x", `-policy={"n":2}`, "true"}, SourcePolicy, `{"n":2}`, false, []string{"true"}},
		{"missing policy", []string{"-name=x", "-policy=", "true"}, SourcePolicy, "", false, []string{"true"}},
		{"policy, no flag but it", []string{"-policy=", "true"}, SourcePolicy, "", false, []string{"true"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := resolve(tc.args...)
			if err != nil {
				t.Fatalf("resolve %q: %v", tc.args, err)
			}
			if req.Source != tc.source || req.Data != tc.data || req.Bare != tc.bare || !slices.Equal(req.Template.Command, tc.cmd) {
				t.Fatalf("resolve %q = %+v, want source %d data %q bare %t command %q", tc.args, req, tc.source, tc.data, tc.bare, tc.cmd)
			}
		})
	}
}

func TestResolveBad(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		mention string
	}{
		{"-policy separate", []string{"-policy", `{"n":2}`, "true"}, "write -policy and its value as one argument"},
		{"-policy swallowing a flag", []string{"-policy", "-name=a", "true"}, "write -policy and its value as one argument"},
		{"-json separate", []string{"-json", `{"name":"x"}`}, "write -json and its value as one argument"},
		{"-json alone", []string{"-json"}, "write -json and its value as one argument"},
		{"--policy separate", []string{"--policy", "{}", "x"}, "write -policy"},
		{"-json with flags", []string{"-n=2", `-json={}`}, "-json carries a whole declaration"},
		{"-json with a command", []string{`-json={}`, "x"}, "-json carries a whole declaration"},
		{"-json and -policy", []string{`-json={}`, `-policy={}`}, "not both"},
		{"flags, no command", []string{"-strict", "-n=2", "-name=nginx"}, "missing command after -n -name"},
		{"policy, no command", []string{"-name=x", "-policy={}"}, "missing command: -policy"},
		{"blank command after flags", []string{"-name=x", " "}, "missing command"},
		{"boolean trap", []string{"-shell", "false", "echo x"}, "write -shell=false"},
		{"boolean trap on opt-in", []string{"-allow-data-commands", "true"}, "write -allow-data-commands=true"},
		{"bad duration", []string{"-try=5", "x"}, "such as 500ms, 10m"},
		{"try and timeout", []string{"-try=5s", "-timeout=5s", "x"}, "alias"},
		{"bad declaration", []string{"-n=0", "x"}, "-n must be at least 1"},
		{"data after flags", []string{"-name=x", `{"n": 2}`}, "is a JSON object: pass data as one -policy=VALUE"},
		{"empty object after a policy", []string{"-name=x", "-policy=", "{}"}, "is a JSON object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("resolve %q: error %v, want one mentioning %q", tc.args, err, tc.mention)
			}
			checkOneLine(t, err)
		})
	}
}

func TestParseData(t *testing.T) {
	cases := []struct {
		name     string
		in       string
		allow    bool
		wantName string
		mention  string // "" for success
	}{
		{"whole with opt-in", `{"name":"a","command":"x","n":2}`, true, "a", ""},
		{"command without opt-in", `{"name":"a","command":"x"}`, false, "a", "add -allow-data-commands"},
		{"argv without opt-in", `{"name":"a","command":["sh","-c","id"]}`, false, "a", "add -allow-data-commands"},
		{"no command without opt-in", `{"name":"a","n":2}`, false, "a", "missing command: data without -allow-data-commands sets policy only"},
		{"null command without opt-in", `{"name":"a","command":null}`, false, "a", "missing command"},
		{"no name", `{"command":"x"}`, true, "", `needs a "name"`},
		{"name read despite a bad key", `{"name":"a","command":"x","tyr":"1m"}`, true, "a", `unknown key "tyr"`},
		{"boolean command", `{"name":"a","command":true}`, true, "a", "boolean"},
		{"not an object", `"id"`, true, "", "expected a JSON object, got a string"},
		{"not JSON", `-output=INJECTED`, true, "", "malformed JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, name, err := ParseData(tc.in, tc.allow)
			if name != tc.wantName {
				t.Errorf("name %q, want %q", name, tc.wantName)
			}
			if tc.mention == "" {
				if err != nil || d.Name != tc.wantName {
					t.Fatalf("ParseData(%s) = %+v, %v", tc.in, d, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.mention) || !errors.Is(err, ErrInvalidDeclaration) {
				t.Fatalf("ParseData(%s): error %v, want an invalid declaration mentioning %q", tc.in, err, tc.mention)
			}
			if len(d.Command) != 0 {
				t.Fatalf("ParseData(%s) returned a command with its error: %q", tc.in, d.Command)
			}
			if want := strings.Contains(tc.mention, "allow-data-commands") && !strings.Contains(tc.mention, "missing"); errors.Is(err, ErrDataCommand) != want {
				t.Fatalf("ParseData(%s): errors.Is(%v, ErrDataCommand) is %t, want %t", tc.in, err, !want, want)
			}
			checkOneLine(t, err)
		})
	}
}

func TestWithPolicy(t *testing.T) {
	tmpl, err := parseFlags("-name=web", "-n=3", "-try=1m", "-prefix=ops/web", "nginx -s reload")
	if err != nil {
		t.Fatal(err)
	}

	same, err := tmpl.WithPolicy("  ", false)
	if err != nil || !same.Equal(tmpl) {
		t.Fatalf("an empty policy changed the template: %+v, %v", same, err)
	}

	got, err := tmpl.WithPolicy(` { "n": "2", "timeout": "5m", "command_timeout": "30s", "shell": "false", "max_attempts": null } `, false)
	if err != nil {
		t.Fatal(err)
	}
	want := tmpl
	want.Limit, want.Try, want.CommandTimeout, want.Shell = 2, 5*time.Minute, 30*time.Second, false
	want.Policy = `{"n":"2","timeout":"5m","command_timeout":"30s","shell":"false","max_attempts":null}`
	if !got.Equal(want) {
		t.Fatalf("WithPolicy:\n got %+v\nwant %+v", got, want)
	}
	if !slices.Equal(tmpl.Command, []string{"nginx -s reload"}) || tmpl.Limit != 3 {
		t.Fatalf("WithPolicy changed the template it was called on: %+v", tmpl)
	}

	withCmd, err := tmpl.WithPolicy(`{"command":["systemctl","reload","nginx"]}`, true)
	if err != nil || !slices.Equal(withCmd.Command, []string{"systemctl", "reload", "nginx"}) || withCmd.Shell || withCmd.Name != "web" {
		t.Fatalf("a policy command with the opt-in: %+v, %v", withCmd, err)
	}

	for _, tc := range []struct{ policy, mention string }{
		{`{"name":"other"}`, `cannot set "name"`},
		{`{"command":"id"}`, "needs -allow-data-commands"},
		{`{"n":0}`, "-n must be at least 1"},
		{`{"n":true}`, "expected a number, got the boolean true"},
		{`{"prefix":"/x"}`, "-prefix"},
		{`{"tyr":"1m"}`, `unknown key "tyr"`},
		{`{"policy":"{}"}`, `unknown key "policy"`},
		{`-bogus`, "malformed JSON"},
		{`null`, "expected a JSON object, got null"},
		{`{"n":2} {}`, "unexpected data"},
	} {
		if _, err := tmpl.WithPolicy(tc.policy, false); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("WithPolicy(%s): error %v, want one mentioning %q", tc.policy, err, tc.mention)
		}
	}
}
