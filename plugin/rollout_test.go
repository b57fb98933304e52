package plugin

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// The rolling-restart options, as flags and as JSON keys, mean the same.
func TestRolloutOptionsFlagsAndJSON(t *testing.T) {
	fromFlags, err := parseFlags("-name=web", "-wait-healthy=web", "-wait-healthy", "api",
		"-health-timeout=90s", "-health-settle=3s", "-maint=web", "-drain=5s", "-check", "nginx -t",
		"-hold=2s", "-splay=1s", "-on-failure=continue", "-unless-critical=db", "-version=v42", "nginx -s reload")
	if err != nil {
		t.Fatal(err)
	}
	want := Declaration{WaitHealthy: []string{"web", "api"}, HealthTimeout: 90 * time.Second, HealthSettle: 3 * time.Second,
		Maint: "web", Drain: 5 * time.Second, Check: "nginx -t", Hold: 2 * time.Second, Splay: time.Second,
		OnFailure: "continue", UnlessCritical: []string{"db"}, Version: "v42"}
	got := fromFlags
	if !slices.Equal(got.WaitHealthy, want.WaitHealthy) || got.HealthTimeout != want.HealthTimeout ||
		got.HealthSettle != want.HealthSettle || got.Maint != want.Maint || got.Drain != want.Drain ||
		got.Check != want.Check || got.Hold != want.Hold || got.Splay != want.Splay || got.OnFailure != want.OnFailure ||
		!slices.Equal(got.UnlessCritical, want.UnlessCritical) || got.Version != want.Version {
		t.Fatalf("flags gave %+v", got)
	}
	fromJSON, err := ParseJSON(`{"name":"web","command":"nginx -s reload","wait_healthy":["web","api"],"health_timeout":"90s",
		"health_settle":"3s","maint":"web","drain":"5s","check":"nginx -t","hold":"2s","splay":"1s","on_failure":"continue",
		"unless_critical":"db","version":"v42"}`)
	if err != nil {
		t.Fatal(err)
	}
	if !fromJSON.Equal(fromFlags) {
		t.Fatalf("JSON %+v != flags %+v", fromJSON, fromFlags)
	}
	o := fromJSON.ActionOptions()
	if !slices.Equal(o.Check, []string{"nginx -t"}) || !o.CheckShell || o.Maint != "web" || o.OnFailure != "continue" ||
		o.Hold != 2*time.Second || o.Lock.Prefix != "ct-supervise/web" {
		t.Fatalf("ActionOptions() = %+v", o)
	}
	if d, _ := parseFlags("x"); d.ActionOptions().Check != nil {
		t.Fatal("no -check gave a check")
	}
}

func TestRolloutOptionsBad(t *testing.T) {
	cases := []struct {
		args    []string
		mention string
	}{
		{[]string{"-on-failure=stop", "x"}, `-on-failure must be "halt" or "continue", got "stop"`},
		{[]string{"-hold=-1s", "x"}, "-hold must not be negative"},
		{[]string{"-health-timeout=-1s", "x"}, "-health-timeout must not be negative"},
		{[]string{"-splay=-1s", "x"}, "-splay must not be negative"},
		{[]string{"-drain=5s", "x"}, "-drain 5s needs -maint SERVICE"},
		{[]string{"-health-settle=5s", "x"}, "-health-settle needs -wait-healthy SERVICE"},
		{[]string{"-wait-healthy=", "x"}, `-wait-healthy "" is not a service name`},
		{[]string{"-unless-critical=a b", "x"}, `-unless-critical "a b" is not a service name`},
		{[]string{"-maint=a/b", "x"}, `-maint "a/b" is not a service name`},
		{[]string{"-version=" + strings.Repeat("v", MaxVersionLength+1), "x"}, "-version is 129 characters long"},
		{[]string{"-version=a\nb", "x"}, "-version"},
		{[]string{"-hold=3", "x"}, "expected a duration with a unit"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseFlags(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.mention)
			}
			checkOneLine(t, err)
		})
	}
	if _, err := ParseJSON(`{"command":"x","on_failure":"never"}`); err == nil || !strings.Contains(err.Error(), "-on-failure") {
		t.Fatalf("JSON on_failure never: %v", err)
	}
	if _, err := ParseJSON(`{"command":"x","wait-healthy":"web"}`); err == nil || !strings.Contains(err.Error(), `did you mean "wait_healthy"?`) {
		t.Fatalf("JSON wait-healthy: %v", err)
	}
}

// A check is a command: data may set it only with -allow-data-commands,
// through -json and -policy alike.
func TestCheckIsCode(t *testing.T) {
	if _, _, err := ParseData(`{"name":"a","command":"x","check":"rm -rf /"}`, false); !errors.Is(err, ErrDataCommand) {
		t.Fatalf("ParseData with a check and no opt-in: %v", err)
	}
	tmpl, err := parseFlags("-name=a", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmpl.WithPolicy(`{"check":"id"}`, false); !errors.Is(err, ErrDataCommand) || !strings.Contains(err.Error(), `"check"`) {
		t.Fatalf("WithPolicy with a check and no opt-in: %v", err)
	}
	d, err := tmpl.WithPolicy(`{"check":"nginx -t","wait_healthy":"web","version":"v2"}`, true)
	if err != nil || d.Check != "nginx -t" || d.Version != "v2" {
		t.Fatalf("WithPolicy with opt-in = %+v, %v", d, err)
	}
	// Policy without a check stays data.
	if d, err := tmpl.WithPolicy(`{"wait_healthy":["web"],"hold":"1s"}`, false); err != nil || d.Hold != time.Second {
		t.Fatalf("WithPolicy of rollout policy = %+v, %v", d, err)
	}
}
