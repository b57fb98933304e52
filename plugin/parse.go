package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mitchellh/mapstructure"

	"ct-supervise/action"
	"ct-supervise/health"
	"ct-supervise/lockexec"
)

// maxSlugLength bounds the readable part of a generated name, leaving room
// for the hash suffix well within MaxNameLength.
const maxSlugLength = 40

// nameRE is what a declaration name may look like: it is used as a key in
// the state file, as an argument of `exec NAME` and inside the default lock
// prefix, so it stays within characters that are safe in all three.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// DefaultDeclaration returns a declaration with every default set: Limit 1,
// MonitorRetry lockexec.DefaultMonitorRetries, Shell true, MaxAttempts
// DefaultMaxAttempts. Parsers start from it so that an omitted flag or key
// means the default rather than the zero value.
func DefaultDeclaration() Declaration {
	return Declaration{
		Limit:        lockexec.DefaultLimit,
		MonitorRetry: lockexec.DefaultMonitorRetries,
		Shell:        true,
		MaxAttempts:  DefaultMaxAttempts,
	}
}

// BindFlags registers the declaration flags on fs, writing into d. The
// current values of d are the flags' defaults, so callers bind a
// DefaultDeclaration. `run` and `register` share these flags so that a
// command line moves between them unchanged. After parsing, callers check
// the command line with CheckFlagUse.
func (d *Declaration) BindFlags(fs *flag.FlagSet) {
	fs.IntVar(&d.Limit, "n", d.Limit,
		"number of nodes that may run the command at once (1: a lock, more: a semaphore); every node must use the same value")
	fs.StringVar(&d.Name, "name", d.Name,
		"name of the action (default: generated from the command, identical on every node)")
	fs.StringVar(&d.Prefix, "prefix", d.Prefix,
		"Consul KV prefix of the lock (default \""+DefaultPrefixRoot+"\" + name)")
	fs.Var(durationFlag{&d.Try}, "try",
		"give up if the lock is not acquired within this `duration`, e.g. 10m (0: wait forever)")
	fs.Var(durationFlag{&d.Try}, "timeout",
		"alias of -try: the lock wait, as in consul lock, a `duration` (the command's own limit is -command-timeout)")
	fs.IntVar(&d.MonitorRetry, "monitor-retry", d.MonitorRetry,
		"number of refused connections to the agent to ride out while holding the lock, 1s apart (0: none); Consul's transient errors are ridden out as long as the fence allows")
	fs.BoolVar(&d.Shell, "shell", d.Shell,
		"run the command through /bin/sh -c (write -shell=false: a boolean flag takes its value after \"=\")")
	fs.Var(durationFlag{&d.CommandTimeout}, "command-timeout",
		"terminate the command if it runs longer than this `duration`, e.g. 5m (0: no limit)")
	fs.BoolVar(&d.PassToken, "pass-token", d.PassToken,
		"leave the Consul token (CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, ...) in the command's environment; by default it is removed")
	d.bindRolloutFlags(fs)
}

// bindRolloutFlags registers the flags of a safe rolling restart: the
// check, splay, fleet policy, maintenance, the health gate and the hold.
func (d *Declaration) bindRolloutFlags(fs *flag.FlagSet) {
	fs.Var((*listFlag)(&d.WaitHealthy), "wait-healthy",
		"keep the lock after the command until this node's instances of `SERVICE` pass their Consul checks with fresh results (repeatable)")
	fs.Var(durationFlag{&d.HealthTimeout}, "health-timeout",
		"give up waiting for -wait-healthy after this `duration` (0: the default, "+health.DefaultTimeout.String()+")")
	fs.Var(durationFlag{&d.HealthSettle}, "health-settle",
		"a check counts only once it has passed this `duration` after the command ended (0: each check's own interval)")
	fs.StringVar(&d.Maint, "maint", d.Maint,
		"put this node's `SERVICE` into Consul maintenance mode around the command; it stays in maintenance if the action fails")
	fs.Var(durationFlag{&d.Drain}, "drain",
		"wait this `duration` after -maint before the command, so that consumers drop this node")
	fs.StringVar(&d.Check, "check", d.Check,
		"run this `COMMAND` (through /bin/sh -c) before contending for the lock, e.g. 'nginx -t'; a failure stops the action with no lock taken")
	fs.Var(durationFlag{&d.Hold}, "hold",
		"keep the lock this `duration` after success (warm-up, connection draining)")
	fs.Var(durationFlag{&d.Splay}, "splay",
		"wait a random delay of up to this `duration` before contending, so that a fleet does not hit Consul at once")
	fs.StringVar(&d.OnFailure, "on-failure", d.OnFailure,
		"what a failure here does to the rollout: halt (other nodes wait until it succeeds or 'ct-supervise resume') or continue (default halt)")
	fs.Var((*listFlag)(&d.UnlessCritical), "unless-critical",
		"do not start while an instance of `SERVICE` on another node has a critical check (repeatable)")
	fs.StringVar(&d.Version, "version", d.Version,
		"which config this node applies, shown by 'ct-supervise rollout', e.g. (key \"app/release\")")
}

// BindQueueFlags registers the flags that only matter to a queued action,
// which `register` takes on top of BindFlags: -max-attempts.
func (d *Declaration) BindQueueFlags(fs *flag.FlagSet) {
	fs.IntVar(&d.MaxAttempts, "max-attempts", d.MaxAttempts,
		"number of tries of a failing action before it is marked failed")
}

// ParseJSON decodes one JSON object into a declaration, starting from
// DefaultDeclaration, and finishes it (see Finish). It is the whole
// declaration with no rule about where it came from: register applies
// those with ParseData and WithPolicy. Input is lenient about types,
// since values written by hand into Consul KV are often all strings ("2",
// "true"), and a command may be a string or an array; but a boolean never
// stands for a number or a string. It is strict about keys: a misspelt key
// would otherwise silently mean a default, such as running on every node at
// once. Every error wraps ErrInvalidDeclaration and is one line; the
// declaration returned with an error is the zero one.
func ParseJSON(s string) (Declaration, error) {
	obj, err := decodeObject(s)
	if err != nil {
		return Declaration{}, err
	}
	d := DefaultDeclaration()
	if err := decodeInto(obj, &d); err != nil {
		return Declaration{}, err
	}
	if err := d.Finish(); err != nil {
		return Declaration{}, err
	}
	return d, nil
}

// decodeObject parses s as exactly one JSON object and checks it (see
// checkObject).
func decodeObject(s string) (map[string]any, error) {
	obj, err := decodeJSONObject(s)
	if err != nil {
		return nil, err
	}
	if err := checkObject(obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// decodeJSONObject parses s as exactly one JSON object.
func decodeJSONObject(s string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	// Numbers stay text until mapstructure converts them for their field,
	// so that 2.5 or 1e30 for an integer is an error rather than a silently
	// truncated or overflowed value.
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, invalidf("empty input, expected a JSON object")
		}
		return nil, invalidf("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalidf("unexpected data after the JSON object")
	}
	obj, ok := raw.(map[string]any)
	if !ok {
		return nil, invalidf("expected a JSON object, got %s", jsonKind(raw))
	}
	return obj, nil
}

// checkObject checks the keys of a declaration object (see checkKeys) and
// turns "timeout" into "try", whose alias it is.
func checkObject(obj map[string]any) error {
	if err := checkKeys(obj); err != nil {
		return err
	}
	if t, ok := obj[timeoutAlias]; ok {
		if _, both := obj["try"]; both {
			return invalidf("\"timeout\" is an alias of \"try\": give one of them")
		}
		delete(obj, timeoutAlias)
		obj["try"] = t
	}
	return nil
}

// timeoutAlias is the JSON key, and flag, that `consul lock` users know as
// the lock wait: an alias of "try".
const timeoutAlias = "timeout"

// decodeInto merges the keys of obj onto d: keys that obj lacks (or sets
// to null) keep d's values. It does not finish d.
func decodeInto(obj map[string]any, d *Declaration) error {
	// An array is an argument vector, which a shell would re-split on its
	// spaces: unless "shell" says otherwise, run it as it is.
	if _, isArray := obj["command"].([]any); isArray {
		if _, given := obj["shell"]; !given {
			d.Shell = false
		}
	}
	dc, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			rejectBoolHook,
			jsonNumberToStringHook,
			stringToDurationHook,
			stringToIntHook,
		),
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		// Keys are matched exactly, as checkKeys does: accepting "N" as
		// well as "n" would make two spellings of one key.
		MatchName: func(key, field string) bool { return key == field },
		Result:    d,
	})
	if err != nil {
		return invalidf("%v", err)
	}
	if err := dc.Decode(obj); err != nil {
		return invalidf("%s", decodeErrorText(err))
	}
	return nil
}

// Finish fills in derived defaults (Name, Prefix) and validates d. The
// returned error wraps ErrInvalidDeclaration, is one line and names the
// offending field by its flag. Finish is idempotent: a finished declaration
// finishes to itself.
//
// A command of one element is a command line: white space around it is
// dropped. A command of several elements is an argument vector and is kept
// exactly as given, empty and space-padded arguments included; only its
// first element, the program, must not be blank.
func (d *Declaration) Finish() error {
	if err := d.finishCommand(); err != nil {
		return err
	}
	switch {
	case d.Limit < 1:
		return invalidf("-n must be at least 1, got %d", d.Limit)
	case d.Try < 0:
		return invalidf("-try must not be negative, got %s", d.Try)
	case d.CommandTimeout < 0:
		return invalidf("-command-timeout must not be negative, got %s", d.CommandTimeout)
	case d.MonitorRetry < 0:
		return invalidf("-monitor-retry must not be negative, got %d", d.MonitorRetry)
	case d.MaxAttempts < 1:
		return invalidf("-max-attempts must be at least 1, got %d", d.MaxAttempts)
	}
	if err := d.checkRollout(); err != nil {
		return err
	}

	if d.Name == "" {
		d.Name = GenerateName(d.Command)
	}
	if err := CheckName(d.Name); err != nil {
		return err
	}

	if d.Prefix == "" {
		d.Prefix = DefaultPrefixRoot + d.Name
	}
	if err := checkPrefix(d.Prefix); err != nil {
		return err
	}
	return nil
}

// checkRollout is Finish's part for the rolling-restart options.
func (d *Declaration) checkRollout() error {
	for _, f := range []struct {
		flag string
		v    time.Duration
	}{{"health-timeout", d.HealthTimeout}, {"health-settle", d.HealthSettle}, {"drain", d.Drain}, {"hold", d.Hold}, {"splay", d.Splay}} {
		if f.v < 0 {
			return invalidf("-%s must not be negative, got %s", f.flag, f.v)
		}
	}
	switch d.OnFailure {
	case "", action.OnFailureHalt, action.OnFailureContinue:
	default:
		return invalidf("-on-failure must be %q or %q, got %q", action.OnFailureHalt, action.OnFailureContinue, d.OnFailure)
	}
	for _, l := range []struct {
		flag     string
		services []string
	}{{"wait-healthy", d.WaitHealthy}, {"unless-critical", d.UnlessCritical}, {"maint", nonEmpty(d.Maint)}} {
		for _, s := range l.services {
			if err := checkServiceName(l.flag, s); err != nil {
				return err
			}
		}
	}
	switch {
	case d.Drain > 0 && d.Maint == "":
		return invalidf("-drain %s needs -maint SERVICE: draining waits for consumers to drop a service in maintenance", d.Drain)
	case d.HealthSettle > 0 && len(d.WaitHealthy) == 0:
		return invalidf("-health-settle needs -wait-healthy SERVICE")
	}
	d.Check = strings.TrimSpace(d.Check)
	if !utf8.ValidString(d.Check) || strings.IndexByte(d.Check, 0) >= 0 {
		return invalidf("-check %q must be valid UTF-8 without NUL bytes", d.Check)
	}
	switch {
	case len(d.Version) > MaxVersionLength:
		return invalidf("-version is %d characters long, at most %d are allowed", len(d.Version), MaxVersionLength)
	case strings.IndexFunc(d.Version, unicode.IsControl) >= 0 || !utf8.ValidString(d.Version):
		return invalidf("-version %q must be one line of text", d.Version)
	}
	return nil
}

// checkServiceName rejects what cannot be a Consul service name: it would
// never match, and the gate or the blocker would wait in vain.
func checkServiceName(flag, s string) error {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) >= 0 {
		return invalidf("-%s %q is not a service name (no blanks, white space or '/')", flag, s)
	}
	return nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// finishCommand is Finish's part for the command (see Finish).
func (d *Declaration) finishCommand() error {
	switch {
	case len(d.Command) == 0:
		return invalidf("missing command")
	case len(d.Command) == 1:
		d.Command = []string{strings.TrimSpace(d.Command[0])}
		if d.Command[0] == "" {
			return invalidf("missing command")
		}
	case strings.TrimSpace(d.Command[0]) == "":
		if strings.TrimSpace(strings.Join(d.Command, "")) == "" {
			return invalidf("missing command")
		}
		return invalidf("the command's first argument, the program to run, is blank")
	}
	for _, c := range d.Command {
		// The declaration is kept as JSON, which cannot carry invalid
		// UTF-8: the command would come back changed.
		if !utf8.ValidString(c) {
			return invalidf("command %q is not valid UTF-8", c)
		}
		// exec(2) cannot pass a NUL byte: the command could never run.
		if strings.IndexByte(c, 0) >= 0 {
			return invalidf("command %q contains a NUL byte", c)
		}
	}
	return nil
}

// CheckName reports whether name can name an action: in the state file,
// as `exec NAME` and inside the default lock prefix. The error wraps
// ErrInvalidDeclaration.
func CheckName(name string) error {
	if len(name) > MaxNameLength {
		return invalidf("-name %q is %d characters long, at most %d are allowed", name, len(name), MaxNameLength)
	}
	if !nameRE.MatchString(name) {
		return invalidf("-name %q must start with a letter or digit and contain only letters, digits, '.', '_' and '-'", name)
	}
	return nil
}

// checkPrefix rejects KV prefixes that would not name the same key on every
// node or that Consul would treat differently from what the operator wrote.
func checkPrefix(p string) error {
	switch {
	case !utf8.ValidString(p):
		return invalidf("-prefix %q is not valid UTF-8", p)
	case strings.HasPrefix(p, "/"):
		// Consul strips a leading slash, so "/a" and "a" would be the same
		// lock under two spellings.
		return invalidf("-prefix %q must not start with \"/\"", p)
	case strings.HasSuffix(p, "/"):
		// The lock key is the prefix plus ".lock"; a trailing slash would
		// hide it inside a folder of that name.
		return invalidf("-prefix %q must not end with \"/\"", p)
	case !lockexec.CleanPrefix(p):
		return invalidf("-prefix %q must not contain empty, \".\" or \"..\" segments", p)
	case strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return invalidf("-prefix %q must not contain white space or control characters", p)
	}
	return nil
}

// GenerateName makes a stable, file- and KV-safe name from a command: a
// lowercase slug of the command line (at most 40 characters of letters,
// digits, '-', '.' and '_') plus "-" and the first 8 hex digits of the
// SHA-256 of the command joined with spaces, e.g. "nginx-s-reload-3f2a9c1b".
// Identical commands on every node give the same name, so they meet on the
// same lock prefix; the hash keeps different commands whose slugs collide
// (or are cut short) apart.
func GenerateName(command []string) string {
	line := strings.Join(command, " ")
	sum := sha256.Sum256([]byte(line))
	hash := hex.EncodeToString(sum[:4])

	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(line) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_':
			b.WriteRune(r)
			dash = false
		case !dash:
			// A '-' of the command joins the run of separators around
			// it, so that "nginx -s" gives "nginx-s", not "nginx--s".
			b.WriteByte('-')
			dash = true
		}
	}
	// A name must start with a letter or digit; trailing separators would
	// only run into the one before the hash.
	slug := strings.TrimLeft(b.String(), "-._")
	if len(slug) > maxSlugLength {
		slug = slug[:maxSlugLength]
	}
	slug = strings.TrimRight(slug, "-._")
	if slug == "" {
		slug = "cmd"
	}
	return slug + "-" + hash
}

// Equal reports whether d and o declare the same action with the same
// policy. A nil and an empty Command are equal, since JSON does not keep
// the difference.
func (d Declaration) Equal(o Declaration) bool {
	return d.Name == o.Name &&
		slices.Equal(d.Command, o.Command) &&
		d.Limit == o.Limit &&
		d.Prefix == o.Prefix &&
		d.Try == o.Try &&
		d.MonitorRetry == o.MonitorRetry &&
		d.Shell == o.Shell &&
		d.CommandTimeout == o.CommandTimeout &&
		d.MaxAttempts == o.MaxAttempts &&
		slices.Equal(d.WaitHealthy, o.WaitHealthy) &&
		d.HealthTimeout == o.HealthTimeout &&
		d.HealthSettle == o.HealthSettle &&
		d.Maint == o.Maint &&
		d.Drain == o.Drain &&
		d.Check == o.Check &&
		d.Hold == o.Hold &&
		d.Splay == o.Splay &&
		d.OnFailure == o.OnFailure &&
		slices.Equal(d.UnlessCritical, o.UnlessCritical) &&
		d.Version == o.Version &&
		d.Policy == o.Policy &&
		d.PassToken == o.PassToken
}

// invalidf builds a declaration error. Messages end up in a one-line log
// entry, in `status` output and in the state file, so line breaks that user
// input may have smuggled into them are escaped.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidDeclaration, OneLine(fmt.Sprintf(format, args...)))
}

// OneLine escapes line and paragraph separators.
func OneLine(s string) string {
	return strings.NewReplacer(
		"\r", `\r`,
		"\n", `\n`,
		"\u0085", `\u0085`,
		"\u2028", `\u2028`,
		"\u2029", `\u2029`,
	).Replace(s)
}

// declarationKeys returns the JSON keys of a declaration, from the
// mapstructure tags so that they cannot drift from the decoder's view.
func declarationKeys() []string {
	t := reflect.TypeFor[Declaration]()
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("mapstructure"), ","); tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	sort.Strings(keys)
	return keys
}

// checkKeys rejects unknown keys before decoding, for a clearer message
// than mapstructure's, with a hint for the flag spelling of a key.
func checkKeys(obj map[string]any) error {
	known := append(declarationKeys(), timeoutAlias)
	sort.Strings(known)
	var unknown []string
	for k := range obj {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	k := unknown[0]
	hint := ""
	if alt := strings.ToLower(strings.ReplaceAll(strings.TrimLeft(k, "-"), "-", "_")); alt != k && slices.Contains(known, alt) {
		hint = fmt.Sprintf(" (did you mean %q?)", alt)
	} else {
		hint = " (known keys: " + strings.Join(known, ", ") + ")"
	}
	if len(unknown) > 1 {
		return invalidf("unknown key %q and %d more%s", k, len(unknown)-1, hint)
	}
	return invalidf("unknown key %q%s", k, hint)
}

// jsonKind names the JSON type of a decoded value for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// decodeErrorText flattens mapstructure's multi-line error list into one
// line.
func decodeErrorText(err error) string {
	var me *mapstructure.Error
	if errors.As(err, &me) && len(me.Errors) > 0 {
		msgs := slices.Clone(me.Errors)
		sort.Strings(msgs)
		return strings.Join(msgs, "; ")
	}
	return err.Error()
}

// jsonNumberToStringHook turns json.Number into a plain string before the
// other hooks see it: mapstructure's duration hook asserts a string-kinded
// value to string, which a json.Number is not. As text, a number for a
// duration field then fails for lack of a unit ("600" is not "600s"),
// instead of silently meaning nanoseconds.
func jsonNumberToStringHook(_ reflect.Type, _ reflect.Type, data any) (any, error) {
	if n, ok := data.(json.Number); ok {
		return string(n), nil
	}
	return data, nil
}

// stringToIntHook parses text for integer fields in base 10. mapstructure's
// own weak conversion guesses the base from the prefix, which would read
// "010" as 8 and accept "0x10".
func stringToIntHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if f.Kind() != reflect.String || t == reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
	default:
		return data, nil
	}
	s := reflect.ValueOf(data).String()
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, t.Bits())
	if err != nil {
		return nil, fmt.Errorf("expected a whole number, got %q", s)
	}
	return n, nil
}

// rejectBoolHook refuses a boolean for any field that is not one. Weak
// typing would read {"command": true} as the command "1" and "n": true as
// one node: a value that cannot have been meant.
func rejectBoolHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if f.Kind() != reflect.Bool || t.Kind() == reflect.Bool {
		return data, nil
	}
	want := "a string"
	switch {
	case t == reflect.TypeFor[time.Duration]():
		want = "a duration such as \"10m\""
	case t.Kind() == reflect.Int:
		want = "a number"
	case t.Kind() == reflect.Slice:
		want = "a string or an array of strings"
	}
	return nil, fmt.Errorf("expected %s, got the boolean %v", want, data)
}

// stringToDurationHook parses text for duration fields, with the same
// message as the duration flags.
func stringToDurationHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if f.Kind() != reflect.String || t != reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	return parseDuration(reflect.ValueOf(data).String())
}

// Compile-time check that the hooks have a signature mapstructure accepts.
var (
	_ mapstructure.DecodeHookFuncType = rejectBoolHook
	_ mapstructure.DecodeHookFuncType = jsonNumberToStringHook
	_ mapstructure.DecodeHookFuncType = stringToDurationHook
	_ mapstructure.DecodeHookFuncType = stringToIntHook
)
