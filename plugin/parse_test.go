package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"ct-supervise/lockexec"
)

// parseFlags is what `register` does with a template's flags.
func parseFlags(args ...string) (Declaration, error) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	d := DefaultDeclaration()
	d.BindFlags(fs)
	d.BindQueueFlags(fs)
	if err := fs.Parse(args); err != nil {
		return d, err
	}
	if err := CheckFlagUse(fs, args); err != nil {
		return d, err
	}
	d.Command = fs.Args()
	return d, d.Finish()
}

// checkOneLine fails the test if an error message spans several lines:
// messages go to one-line logs and into the state file.
func checkOneLine(t *testing.T, err error) {
	t.Helper()
	if msg := err.Error(); strings.ContainsAny(msg, "\r\n") {
		t.Errorf("error message is not one line: %q", msg)
	}
}

func TestDefaultDeclaration(t *testing.T) {
	d := DefaultDeclaration()
	if d.Limit != 1 || d.MonitorRetry != lockexec.DefaultMonitorRetries || !d.Shell || d.MaxAttempts != DefaultMaxAttempts {
		t.Fatalf("DefaultDeclaration() = %+v", d)
	}
	if d.Try != 0 || d.CommandTimeout != 0 || d.Name != "" || d.Prefix != "" || d.Command != nil {
		t.Fatalf("DefaultDeclaration() sets more than the documented defaults: %+v", d)
	}
}

func TestFlagsGood(t *testing.T) {
	defaults := func(name string, cmd ...string) Declaration {
		d := DefaultDeclaration()
		d.Name = name
		d.Prefix = DefaultPrefixRoot + name
		d.Command = cmd
		return d
	}
	cases := []struct {
		name string
		args []string
		want func() Declaration
	}{
		{
			name: "defaults",
			args: []string{"nginx -s reload"},
			want: func() Declaration {
				return defaults(GenerateName([]string{"nginx -s reload"}), "nginx -s reload")
			},
		},
		{
			name: "n name try",
			args: []string{"-n=2", "-name=nginx", "-try=10m", "nginx -s reload"},
			want: func() Declaration {
				d := defaults("nginx", "nginx -s reload")
				d.Limit = 2
				d.Try = 10 * time.Minute
				return d
			},
		},
		{
			name: "no shell, argument vector",
			args: []string{"-shell=false", "-name", "svc", "systemctl", "reload", "nginx"},
			want: func() Declaration {
				d := defaults("svc", "systemctl", "reload", "nginx")
				d.Shell = false
				return d
			},
		},
		{
			name: "every flag",
			args: []string{
				"-n", "3", "-name", "app.v2_x", "-prefix", "ops/locks/app",
				"-try", "1m30s", "-monitor-retry", "0", "-shell=true",
				"-command-timeout", "5m", "-max-attempts", "1", "  run me  ",
			},
			want: func() Declaration {
				return Declaration{
					Name: "app.v2_x", Command: []string{"run me"}, Limit: 3,
					Prefix: "ops/locks/app", Try: 90 * time.Second, MonitorRetry: 0,
					Shell: true, CommandTimeout: 5 * time.Minute, MaxAttempts: 1,
				}
			},
		},
		{
			name: "argument vector kept exactly",
			args: []string{"-name=x", "-shell=false", "printf", "%s|", " a ", "", "b"},
			want: func() Declaration {
				d := defaults("x", "printf", "%s|", " a ", "", "b")
				d.Shell = false
				return d
			},
		},
		{
			name: "timeout is an alias of try",
			args: []string{"-name=x", "-timeout=30s", "true"},
			want: func() Declaration {
				d := defaults("x", "true")
				d.Try = 30 * time.Second
				return d
			},
		},
		{
			name: "a command after flags is code, whatever it looks like",
			args: []string{"-name=x", "[ -x /usr/sbin/nginx ] && nginx -s reload"},
			want: func() Declaration { return defaults("x", "[ -x /usr/sbin/nginx ] && nginx -s reload") },
		},
		{
			name: "name at the length limit",
			args: []string{"-name=" + strings.Repeat("a", MaxNameLength), "true"},
			want: func() Declaration { return defaults(strings.Repeat("a", MaxNameLength), "true") },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFlags(tc.args...)
			if err != nil {
				t.Fatalf("parse %q: %v", tc.args, err)
			}
			if want := tc.want(); !got.Equal(want) {
				t.Fatalf("parse %q:\n got %+v\nwant %+v", tc.args, got, want)
			}
		})
	}
}

func TestFlagsBad(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		mention string // the error must contain this
		invalid bool   // the error must wrap ErrInvalidDeclaration (not a flag syntax error)
	}{
		{"n zero", []string{"-n", "0", "true"}, "-n must be at least 1, got 0", true},
		{"n negative", []string{"-n=-1", "true"}, "-n must be at least 1, got -1", true},
		{"unparseable duration", []string{"-try=10 minutes", "true"}, "-try", false},
		{"negative try", []string{"-try=-1s", "true"}, "-try must not be negative", true},
		{"negative command-timeout", []string{"-command-timeout=-1m", "true"}, "-command-timeout must not be negative", true},
		{"duration without a unit", []string{"-try=10", "true"}, "such as 500ms, 10m", false},
		{"command-timeout without a unit", []string{"-command-timeout=5", "true"}, "such as 500ms, 10m", false},
		{"try and its alias", []string{"-try=1m", "-timeout=2m", "true"}, "alias of -try", false},
		{"boolean flag trap false", []string{"-shell", "false", "echo x"}, "write -shell=false", false},
		{"boolean flag trap true", []string{"--shell", "true", "echo x"}, "write -shell=true", false},
		{"argv with a blank program", []string{"-name=x", " ", "echo"}, "program to run, is blank", true},
		{"command with a NUL byte", []string{"-name=x", "echo a\x00b"}, "NUL", true},
		{"argv element with a NUL byte", []string{"-name=x", "echo", "a\x00b"}, "NUL", true},
		{"negative monitor-retry", []string{"-monitor-retry=-1", "true"}, "-monitor-retry", true},
		{"zero max-attempts", []string{"-max-attempts=0", "true"}, "-max-attempts must be at least 1", true},
		{"missing command", []string{"-name=x"}, "missing command", true},
		{"blank command", []string{"-name=x", " ", "\t"}, "missing command", true},
		{"bad name chars", []string{"-name=ng inx", "true"}, "-name", true},
		{"name with slash", []string{"-name=a/b", "true"}, "-name", true},
		{"name with leading dot", []string{"-name=.hidden", "true"}, "-name", true},
		{"name with newline", []string{"-name=a\nb", "true"}, "-name", true},
		{"name too long", []string{"-name=" + strings.Repeat("a", MaxNameLength+1), "true"}, "at most 64", true},
		{"prefix with leading slash", []string{"-prefix=/locks/x", "true"}, "-prefix", true},
		{"prefix with trailing slash", []string{"-prefix=locks/x/", "true"}, "-prefix", true},
		{"prefix with double slash", []string{"-prefix=locks//x", "true"}, "-prefix", true},
		{"prefix with a dot-dot segment", []string{"-prefix=ops/../x", "true"}, "-prefix", true},
		{"prefix with a dot segment", []string{"-prefix=ops/./x", "true"}, "-prefix", true},
		{"prefix with space", []string{"-prefix=locks/a b", "true"}, "-prefix", true},
		{"prefix with newline", []string{"-prefix=locks/a\nb", "true"}, "-prefix", true},
		{"prefix not UTF-8", []string{"-prefix=locks/\xff", "true"}, "-prefix", true},
		{"command not UTF-8", []string{"-name=x", "echo \xff"}, "UTF-8", true},
		{"unknown flag", []string{"-tyr=10m", "true"}, "tyr", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args...)
			if err == nil {
				t.Fatalf("parse %q: no error", tc.args)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("parse %q: error %q does not mention %q", tc.args, err, tc.mention)
			}
			if tc.invalid && !errors.Is(err, ErrInvalidDeclaration) {
				t.Errorf("parse %q: error %q does not wrap ErrInvalidDeclaration", tc.args, err)
			}
			checkOneLine(t, err)
		})
	}
}

func TestParseJSONGood(t *testing.T) {
	base := func(mod func(*Declaration)) Declaration {
		d := DefaultDeclaration()
		d.Name = "nginx"
		d.Prefix = DefaultPrefixRoot + "nginx"
		d.Command = []string{"nginx -s reload"}
		if mod != nil {
			mod(&d)
		}
		return d
	}
	cases := []struct {
		name string
		in   string
		want Declaration
	}{
		{"minimal", `{"name":"nginx","command":"nginx -s reload"}`, base(nil)},
		{"array command", `{"name":"nginx","command":["systemctl","reload","nginx"],"shell":false}`,
			base(func(d *Declaration) { d.Command = []string{"systemctl", "reload", "nginx"}; d.Shell = false })},
		{"array command runs without a shell", `{"name":"nginx","command":["touch","/tmp/a b"]}`,
			base(func(d *Declaration) { d.Command = []string{"touch", "/tmp/a b"}; d.Shell = false })},
		{"array command with a shell asked for", `{"name":"nginx","command":["echo","hi"],"shell":true}`,
			base(func(d *Declaration) { d.Command = []string{"echo", "hi"} })},
		{"string numbers", `{"name":"nginx","command":"nginx -s reload","n":"2","max_attempts":"3","monitor_retry":"0"}`,
			base(func(d *Declaration) { d.Limit = 2; d.MaxAttempts = 3; d.MonitorRetry = 0 })},
		{"string number base 10", `{"name":"nginx","command":"nginx -s reload","n":"010"}`,
			base(func(d *Declaration) { d.Limit = 10 })},
		{"numbers", `{"name":"nginx","command":"nginx -s reload","n":2}`,
			base(func(d *Declaration) { d.Limit = 2 })},
		{"string bool", `{"name":"nginx","command":"nginx -s reload","shell":"false"}`,
			base(func(d *Declaration) { d.Shell = false })},
		{"durations", `{"name":"nginx","command":"nginx -s reload","try":"10m","command_timeout":"1h30m"}`,
			base(func(d *Declaration) { d.Try = 10 * time.Minute; d.CommandTimeout = 90 * time.Minute })},
		{"timeout is an alias of try", `{"name":"nginx","command":"nginx -s reload","timeout":"10m"}`,
			base(func(d *Declaration) { d.Try = 10 * time.Minute })},
		{"array command kept exactly", `{"name":"nginx","command":["printf","%s|"," a ","","b"]}`,
			base(func(d *Declaration) { d.Command = []string{"printf", "%s|", " a ", "", "b"}; d.Shell = false })},
		{"zero duration number", `{"name":"nginx","command":"nginx -s reload","try":0}`, base(nil)},
		{"prefix", `{"name":"nginx","command":"nginx -s reload","prefix":"ops/nginx"}`,
			base(func(d *Declaration) { d.Prefix = "ops/nginx" })},
		{"null keeps default", `{"name":"nginx","command":"nginx -s reload","n":null}`, base(nil)},
		{"white space around", " \n\t{\"name\":\"nginx\",\"command\":\" nginx -s reload \"}\n ", base(nil)},
		{"generated name", `{"command":"nginx -s reload"}`, base(func(d *Declaration) {
			d.Name = GenerateName([]string{"nginx -s reload"})
			d.Prefix = DefaultPrefixRoot + d.Name
		})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseJSON(tc.in)
			if err != nil {
				t.Fatalf("ParseJSON(%s): %v", tc.in, err)
			}
			if !got.Equal(tc.want) {
				t.Fatalf("ParseJSON(%s):\n got %+v\nwant %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseJSONBad(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		mention string
	}{
		{"unknown key", `{"name":"nginx","command":"true","tyr":"10m"}`, `unknown key "tyr"`},
		{"flag spelling of a key", `{"name":"nginx","command":"true","max-attempts":2}`, `did you mean "max_attempts"`},
		{"key case", `{"name":"nginx","command":"true","N":2}`, `unknown key "N"`},
		{"array", `[]`, "expected a JSON object, got an array"},
		{"string", `"str"`, "expected a JSON object, got a string"},
		{"null", `null`, "expected a JSON object, got null"},
		{"empty", ``, "empty input"},
		{"malformed", `{`, "malformed JSON"},
		{"malformed string", "{\"name\":\"a\nb\"}", "malformed JSON"},
		{"trailing garbage", `{} {}`, "unexpected data after the JSON object"},
		{"trailing junk", `{"command":"true"} x`, "unexpected data after the JSON object"},
		{"n zero", `{"n":0,"name":"nginx","command":"true"}`, "-n must be at least 1, got 0"},
		{"n fraction", `{"n":2.5,"name":"nginx","command":"true"}`, "n"},
		{"n huge", `{"n":1e30,"name":"nginx","command":"true"}`, "n"},
		{"n not a number", `{"n":"two","name":"nginx","command":"true"}`, "n"},
		{"n hex", `{"n":"0x10","name":"nginx","command":"true"}`, "n"},
		{"empty command", `{"command":""}`, "missing command"},
		{"no command", `{"name":"nginx"}`, "missing command"},
		{"empty command array", `{"name":"nginx","command":[]}`, "missing command"},
		{"command object", `{"name":"nginx","command":{"a":"b\nc"}}`, "command"},
		{"bad duration", `{"name":"nginx","command":"true","try":"ten minutes"}`, "try"},
		{"duration without unit", `{"name":"nginx","command":"true","try":600}`, "try"},
		{"negative command_timeout", `{"name":"nginx","command":"true","command_timeout":"-1s"}`, "-command-timeout"},
		{"try and its alias", `{"name":"nginx","command":"true","try":"1m","timeout":"1m"}`, "alias"},
		{"boolean command", `{"name":"nginx","command":true}`, "got the boolean true"},
		{"boolean in a command array", `{"name":"nginx","command":["echo",false]}`, "got the boolean false"},
		{"boolean n", `{"name":"nginx","command":"true","n":true}`, "expected a number, got the boolean true"},
		{"boolean name", `{"name":true,"command":"true"}`, "got the boolean"},
		{"boolean duration", `{"name":"nginx","command":"true","try":true}`, "got the boolean"},
		{"duration error names an example", `{"name":"nginx","command":"true","try":"soon"}`, "such as 500ms, 10m"},
		{"old key for the command's limit", `{"name":"nginx","command":"true","command-timeout":"1m"}`, `did you mean "command_timeout"`},
		{"bad bool", `{"name":"nginx","command":"true","shell":"yes"}`, "shell"},
		{"bad name", `{"name":"ng inx","command":"true"}`, "-name"},
		{"name not a string", `{"name":["a\nb"],"command":"true"}`, "name"},
		{"bad prefix", `{"name":"nginx","command":"true","prefix":"/x"}`, "-prefix"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseJSON(tc.in)
			if err == nil {
				t.Fatalf("ParseJSON(%s): no error", tc.in)
			}
			if !errors.Is(err, ErrInvalidDeclaration) {
				t.Errorf("ParseJSON(%s): error %q does not wrap ErrInvalidDeclaration", tc.in, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid declaration: ") {
				t.Errorf("ParseJSON(%s): error %q lacks the prefix", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("ParseJSON(%s): error %q does not mention %q", tc.in, err, tc.mention)
			}
			checkOneLine(t, err)
		})
	}
}

// The JSON and flag forms of one declaration must agree, or a declaration
// moved from a template into KV would change meaning.
func TestJSONMatchesFlags(t *testing.T) {
	fromFlags, err := parseFlags("-n=2", "-name=nginx", "-try=10m", "-shell=false", "-command-timeout=30s", "-monitor-retry=1", "-max-attempts=2", "nginx -s reload")
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := ParseJSON(`{"n":2,"name":"nginx","try":"10m","shell":false,"command_timeout":"30s","monitor_retry":1,"max_attempts":2,"command":"nginx -s reload"}`)
	if err != nil {
		t.Fatal(err)
	}
	if !fromFlags.Equal(fromJSON) {
		t.Fatalf("flags %+v != JSON %+v", fromFlags, fromJSON)
	}
}

func TestGenerateName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*-[0-9a-f]{8}$`)
	cases := []struct {
		cmd      []string
		wantSlug string
	}{
		{[]string{"nginx -s reload"}, "nginx-s-reload"},
		{[]string{"systemctl", "reload", "nginx.service"}, "systemctl-reload-nginx.service"},
		{[]string{"/usr/bin/Foo_Bar --x=1"}, "usr-bin-foo_bar-x-1"},
		{[]string{"a -- b"}, "a-b"},
		{[]string{"kill -HUP $(cat /run/app.pid)"}, "kill-hup-cat-run-app.pid"},
		{[]string{"échó ünïcode"}, "ch-n-code"},
		{[]string{"!!! ???"}, "cmd"},
		{[]string{"._-weird-._"}, "weird"},
		{[]string{strings.Repeat("abcdefghij ", 10)}, "abcdefghij-abcdefghij-abcdefghij-abcdefg"},
	}
	for _, tc := range cases {
		got := GenerateName(tc.cmd)
		if !valid.MatchString(got) || len(got) > MaxNameLength {
			t.Errorf("GenerateName(%q) = %q: not a valid name", tc.cmd, got)
		}
		if slug := got[:len(got)-9]; slug != tc.wantSlug {
			t.Errorf("GenerateName(%q) = %q, want slug %q", tc.cmd, got, tc.wantSlug)
		}
		if again := GenerateName(append([]string(nil), tc.cmd...)); again != got {
			t.Errorf("GenerateName(%q) is not stable: %q then %q", tc.cmd, got, again)
		}
		d := Declaration{Command: tc.cmd, Name: got}
		d = withDefaults(d)
		if err := d.Finish(); err != nil {
			t.Errorf("generated name %q rejected: %v", got, err)
		}
	}

	// A fixed value: the name is shared by nodes running different builds,
	// so it must never change between releases.
	if got, want := GenerateName([]string{"nginx -s reload"}), "nginx-s-reload-"+sha8("nginx -s reload"); got != want {
		t.Errorf("GenerateName = %q, want %q", got, want)
	}
	// Commands whose slugs collide still get different names.
	if a, b := GenerateName([]string{"a/b"}), GenerateName([]string{"a b"}); a == b {
		t.Errorf("different commands share the name %q", a)
	}
	long := strings.Repeat("x", 100)
	if a, b := GenerateName([]string{long + "1"}), GenerateName([]string{long + "2"}); a == b {
		t.Errorf("different long commands share the name %q", a)
	}
}

// sha8 is the hash part of a generated name, computed independently.
func sha8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:8]
}

// withDefaults fills the zero policy fields of d from DefaultDeclaration.
func withDefaults(d Declaration) Declaration {
	def := DefaultDeclaration()
	def.Name, def.Command, def.Prefix = d.Name, d.Command, d.Prefix
	return def
}

func TestFinishIdempotent(t *testing.T) {
	d, err := parseFlags("-n=2", " nginx -s reload ")
	if err != nil {
		t.Fatal(err)
	}
	again := d
	again.Command = append([]string(nil), d.Command...)
	if err := again.Finish(); err != nil {
		t.Fatalf("finishing a finished declaration: %v", err)
	}
	if !again.Equal(d) {
		t.Fatalf("Finish changed a finished declaration: %+v -> %+v", d, again)
	}
}

func TestDeclarationJSONRoundTrip(t *testing.T) {
	d, err := parseFlags("-n=3", "-name=app", "-prefix=ops/app", "-try=10m", "-command-timeout=1m", "-monitor-retry=7", "-shell=false", "-max-attempts=9", "systemctl", "reload", "app")
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back Declaration
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !back.Equal(d) {
		t.Fatalf("round trip through %s:\n got %+v\nwant %+v", data, back, d)
	}
}

func TestDeclarationEqual(t *testing.T) {
	a := DefaultDeclaration()
	a.Command = []string{"x"}
	b := a
	b.Command = []string{"x"}
	if !a.Equal(b) {
		t.Error("equal declarations reported different")
	}
	b.Command = []string{"x", "y"}
	if a.Equal(b) {
		t.Error("different commands reported equal")
	}
	b = a
	b.CommandTimeout = time.Second
	if a.Equal(b) {
		t.Error("different timeouts reported equal")
	}
	// Every field counts: a field added to Declaration but not to Equal
	// would make Register miss changes to it.
	rt := reflect.TypeFor[Declaration]()
	for i := range rt.NumField() {
		var x, y Declaration
		f := reflect.ValueOf(&y).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x")
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"x"}))
		case reflect.Int, reflect.Int64:
			f.SetInt(1)
		case reflect.Bool:
			f.SetBool(true)
		default:
			t.Fatalf("field %s: kind %s not covered by this test", rt.Field(i).Name, f.Kind())
		}
		if x.Equal(y) {
			t.Errorf("Equal ignores field %s", rt.Field(i).Name)
		}
	}
	var nilCmd, emptyCmd Declaration
	emptyCmd.Command = []string{}
	if !nilCmd.Equal(emptyCmd) {
		t.Error("nil and empty commands reported different")
	}
}
