package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
)

// The flags that carry data into `register`. Their values are only ever
// one JSON object (or nothing), never flags or a command.
const (
	// JSONFlag carries a whole declaration (-json=VALUE).
	JSONFlag = "json"
	// PolicyFlag carries policy merged onto the template's own command
	// (-policy=VALUE).
	PolicyFlag = "policy"
	// AllowDataCommandsFlag lets data set "command".
	AllowDataCommandsFlag = "allow-data-commands"
)

// ErrDataCommand is wrapped by the error for data that sets a command
// (a key of codeKeys) without the template's -allow-data-commands.
var ErrDataCommand = errors.New("a command from data needs -allow-data-commands")

// codeKeys are the JSON keys whose values are run, or that give what runs
// a privilege: data may set them only with -allow-data-commands. A key for
// a second command (a check before the lock, say) belongs here too.
var codeKeys = []string{"command", "pass_token"}

// dataCommandError is the error for data that sets a code key: it wraps
// both ErrInvalidDeclaration and ErrDataCommand.
func dataCommandError(format string, a ...any) error {
	return fmt.Errorf("%w: %w in the template: commands are code, so %s", ErrInvalidDeclaration, ErrDataCommand, fmt.Sprintf(format, a...))
}

// dataCommandKey returns the first key of codeKeys that obj sets (a null
// value sets nothing), "" if none.
func dataCommandKey(obj map[string]any) string {
	for _, k := range codeKeys {
		if obj[k] != nil {
			return k
		}
	}
	return ""
}

// Source says where a register call's declaration comes from, which
// decides what a bad one does: code fails the render, data does not.
type Source int

const (
	// SourceNone is no declaration at all: the data is not there yet
	// (consul-template drops an empty argument). Nothing to do.
	SourceNone Source = iota
	// SourceTemplate is the template's flags and command: code.
	SourceTemplate
	// SourceData is a whole declaration from -json, or from a bare JSON
	// argument (Request.Bare): data.
	SourceData
	// SourcePolicy is the template's flags and command (code) with -policy
	// data merged on.
	SourcePolicy
)

// Args is `register`'s command line as a template writes it. BindArgs
// binds it to a flag set that may carry the caller's own flags too;
// Parse and Resolve then turn it into a Request.
type Args struct {
	// Template receives the declaration flags; Resolve adds the command.
	Template Declaration
	// JSON is -json's value; empty means none (or missing data).
	JSON string
	// Policy is -policy's value; empty means none (or missing data).
	Policy string
	// AllowDataCommands is -allow-data-commands: data may set "command".
	AllowDataCommands bool

	fs        *flag.FlagSet
	declFlags []string // names of the declaration flags on fs
}

// Request is a resolved register call.
type Request struct {
	Source Source
	// Template is the template's own declaration, finished, for
	// SourceTemplate and SourcePolicy.
	Template Declaration
	// Data is the -json value (SourceData) or the -policy value
	// (SourcePolicy; empty when missing), trimmed.
	Data string
	// Bare reports a declaration given as a bare JSON argument, the
	// deprecated spelling of -json.
	Bare bool
	// AllowDataCommands is -allow-data-commands.
	AllowDataCommands bool
}

// BindArgs binds the declaration flags (BindFlags, BindQueueFlags), -json,
// -policy and -allow-data-commands on fs, starting from DefaultDeclaration.
func BindArgs(fs *flag.FlagSet) *Args {
	a := &Args{Template: DefaultDeclaration(), fs: fs}
	before := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { before[f.Name] = true })
	a.Template.BindFlags(fs)
	a.Template.BindQueueFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !before[f.Name] {
			a.declFlags = append(a.declFlags, f.Name)
		}
	})
	fs.StringVar(&a.JSON, JSONFlag, "",
		"a whole declaration as one JSON object, from data: write it as one argument, (printf \"-json=%s\" (key \"...\"))")
	fs.StringVar(&a.Policy, PolicyFlag, "",
		"policy as one JSON object, from data, merged onto the template's command: write it as one argument, (printf \"-policy=%s\" (key \"...\"))")
	fs.BoolVar(&a.AllowDataCommands, AllowDataCommandsFlag, false,
		"let data (-json, -policy) set \"command\"; without it commands come only from the template")
	return a
}

// Parse parses args into a's flag set. A data flag must be written as one
// argument, -policy=VALUE: consul-template drops an empty argument, so
// with the data missing "-policy" VALUE would take the next argument,
// a flag or the command, as its value.
func (a *Args) Parse(args []string) error {
	err := a.fs.Parse(args)
	flagPart := args
	if err == nil {
		flagPart = args[:len(args)-len(a.fs.Args())]
	}
	for _, arg := range flagPart {
		if arg == "--" {
			break
		}
		if name := strings.TrimLeft(arg, "-"); strings.HasPrefix(arg, "-") && (name == JSONFlag || name == PolicyFlag) {
			return fmt.Errorf("write -%s and its value as one argument, (printf \"-%s=%%s\" (key \"...\")): consul-template drops an empty argument, so while the data is missing the next argument would be read as the %s",
				name, name, name)
		}
	}
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	if err != nil {
		// The flag package quotes the argument as given, line breaks
		// and all.
		return errors.New(OneLine(err.Error()))
	}
	return CheckFlagUse(a.fs, args)
}

// Resolve tells what the parsed command line declares. Its errors are the
// template's (code): the caller fails the render with them.
func (a *Args) Resolve() (Request, error) {
	req := Request{AllowDataCommands: a.AllowDataCommands}
	set := map[string]bool{}
	var declGiven []string
	a.fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		if slices.Contains(a.declFlags, f.Name) {
			declGiven = append(declGiven, "-"+f.Name)
		}
	})
	rest := a.fs.Args()

	switch {
	case set[JSONFlag] && set[PolicyFlag]:
		return req, errors.New("give -json (a whole declaration) or -policy (policy for the template's command), not both")

	case set[JSONFlag]:
		if len(declGiven) > 0 || len(rest) > 0 {
			return req, fmt.Errorf("-json carries a whole declaration: give it no declaration flags or command (got %s); to add data to the template's command, use -policy",
				strings.Join(append(declGiven, quoteAll(rest)...), " "))
		}
		req.Data = strings.TrimSpace(a.JSON)
		if req.Data != "" {
			req.Source = SourceData
		}
		return req, nil

	case len(rest) == 0 && set[PolicyFlag]:
		return req, invalidf("missing command: -policy sets policy for the template's command, written after the flags (a command from data needs -json and -allow-data-commands)")

	case len(rest) == 0 && len(declGiven) > 0:
		return req, invalidf("missing command after %s: flags without a command declare nothing (to take the whole declaration from data, use -json)", strings.Join(declGiven, " "))

	case len(rest) == 0 || len(rest) == 1 && strings.TrimSpace(rest[0]) == "" && !set[PolicyFlag] && len(declGiven) == 0:
		// consul-template drops empty arguments, so a declaration read
		// from KV that is not there yet arrives as nothing at all.
		return req, nil

	case len(rest) == 1 && len(declGiven) == 0 && !set[PolicyFlag] && looksLikeBareData(rest[0]):
		req.Source, req.Data, req.Bare = SourceData, strings.TrimSpace(rest[0]), true
		return req, nil
	}

	if len(rest) == 1 && isJSONObject(rest[0]) {
		// No shell runs a JSON object; a template that passes data after
		// its flags, (key "...") where -policy= was meant, would.
		return req, fmt.Errorf("the command %q is a JSON object: pass data as one -policy=VALUE (or -json=VALUE) argument, e.g. (printf \"-policy=%%s\" (key \"...\"))", rest[0])
	}
	d := a.Template
	d.Command = slices.Clone(rest)
	if err := d.Finish(); err != nil {
		return req, err
	}
	req.Template = d
	req.Source = SourceTemplate
	if set[PolicyFlag] {
		req.Source = SourcePolicy
		req.Data = strings.TrimSpace(a.Policy)
	}
	return req, nil
}

// looksLikeBareData tells a declaration given the deprecated way, as a
// lone argument with no declaration flag before it, from a command line.
// A JSON object is data. So, to keep such a KV value from ever running as
// a shell command, is what a bad value of that key would look like: a
// JSON array, string or null, or several lines. A template that means a
// command of that shape writes a flag such as -name before it: a command
// written after flags is always code.
func looksLikeBareData(arg string) bool {
	a := strings.TrimSpace(arg)
	return strings.HasPrefix(a, "{") || strings.HasPrefix(a, "[") || strings.HasPrefix(a, `"`) ||
		a == "null" || strings.Contains(a, "\n")
}

// isJSONObject reports whether s is one valid JSON object.
func isJSONObject(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "{") && json.Valid([]byte(s))
}

// quoteAll quotes each argument for an error message.
func quoteAll(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return q
}

// ParseData reads a whole declaration given as data (-json, or a bare JSON
// argument). Data has no generated name: a name is what ties it to the
// last good declaration, so a missing one is an error. "command" is code,
// accepted from data only with allowCommands. The name is returned whenever
// it could be read, even with an error, so that the error is recorded
// against it.
func ParseData(s string, allowCommands bool) (d Declaration, name string, err error) {
	obj, err := decodeJSONObject(s)
	if err != nil {
		return Declaration{}, "", err
	}
	if n, ok := obj["name"].(string); ok {
		name = strings.TrimSpace(n)
	}
	if err := checkObject(obj); err != nil {
		return Declaration{}, name, err
	}
	if k := dataCommandKey(obj); k != "" && !allowCommands {
		return Declaration{}, name, dataCommandError("data may set %q only with it; add -allow-data-commands to the register call, or move the command into the template and pass this data with -policy", k)
	}
	d = DefaultDeclaration()
	if err := decodeInto(obj, &d); err != nil {
		return Declaration{}, name, err
	}
	if len(d.Command) == 0 && !allowCommands {
		return Declaration{}, name, invalidf("missing command: data without -allow-data-commands sets policy only; write the command in the template and pass this data with -policy")
	}
	if err := d.Finish(); err != nil {
		return Declaration{}, name, err
	}
	if name == "" {
		return Declaration{}, "", invalidf("a JSON declaration needs a \"name\"")
	}
	return d, name, nil
}

// WithPolicy returns d, the template's finished declaration, with the
// policy data merged on in consul-template's manner: d's values are the
// defaults, each key of the policy overrides one, and the result is
// finished and validated as a whole. "name" cannot be set (the template's
// -name or command names the action); "command" only with allowCommands.
// An empty policy returns d unchanged.
func (d Declaration) WithPolicy(policy string, allowCommands bool) (Declaration, error) {
	policy = strings.TrimSpace(policy)
	if policy == "" {
		return d, nil
	}
	obj, err := decodeJSONObject(policy)
	if err != nil {
		return Declaration{}, err
	}
	if err := checkObject(obj); err != nil {
		return Declaration{}, err
	}
	if _, ok := obj["name"]; ok {
		return Declaration{}, invalidf("a policy cannot set \"name\": the template names the action")
	}
	if k := dataCommandKey(obj); k != "" && !allowCommands {
		return Declaration{}, dataCommandError("a policy may set %q only with it", k)
	}
	m := d
	m.Command = slices.Clone(d.Command)
	if err := decodeInto(obj, &m); err != nil {
		return Declaration{}, err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(policy)); err != nil {
		return Declaration{}, invalidf("malformed JSON: %v", err)
	}
	m.Policy = compact.String()
	if err := m.Finish(); err != nil {
		return Declaration{}, err
	}
	return m, nil
}
