package plugin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func FuzzParseJSON(f *testing.F) {
	seeds := []string{
		`{"name":"nginx","command":"nginx -s reload"}`,
		`{"name":"nginx","command":["systemctl","reload","nginx"],"shell":false}`,
		`{"n":"2","max_attempts":"3","monitor_retry":"0","command":"x"}`,
		`{"n":2,"try":"10m","command_timeout":"1h","prefix":"ops/x","command":"x"}`,
		`{"timeout":"1m","command":["a"," ",""]}`,
		`{"n":true,"command":true}`,
		`{"try":600,"command":"x"}`,
		`{"n":2.5,"command":"x"}`,
		`{"n":1e400,"command":"x"}`,
		`{"shell":"yes","command":"x"}`,
		`{"command":{"a":["b"]}}`,
		`{"command":[1,true,null,{"x":1}]}`,
		`{"name":["a\nb"],"command":"x"}`,
		`{"tyr":"10m"}`,
		`{"command":""}`,
		`{"command":"\u00e9\u2028\ud800"}`,
		`{"prefix":"a//b","command":"x"}`,
		`[]`,
		`"str"`,
		`null`,
		`{`,
		`{} {}`,
		``,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseJSON(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidDeclaration) {
				t.Fatalf("ParseJSON(%q): error %q does not wrap ErrInvalidDeclaration", in, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("ParseJSON(%q): error is not one line: %q", in, err)
			}
			return
		}

		again := d
		again.Command = append([]string(nil), d.Command...)
		if err := again.Finish(); err != nil {
			t.Fatalf("ParseJSON(%q) = %+v, which Finish rejects: %v", in, d, err)
		}
		if !again.Equal(d) {
			t.Fatalf("ParseJSON(%q) = %+v, which Finish changes to %+v", in, d, again)
		}

		data, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("marshal %+v: %v", d, err)
		}
		var back Declaration
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("unmarshal %s: %v", data, err)
		}
		if !back.Equal(d) {
			t.Fatalf("round trip of ParseJSON(%q) through %s:\n got %+v\nwant %+v", in, data, back, d)
		}
	})
}
