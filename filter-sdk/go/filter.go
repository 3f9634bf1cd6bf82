// Package filter writes rtcrm campaign filters in Go. A filter is a plain function of the event
// (and, for a campaign with "state", of the player's State); the package implements the filter
// ABI, version 2 (filter-sdk/ABI.md), for GOOS=wasip1 GOARCH=wasm with //go:wasmexport, and
// everything else builds natively so filters unit-test with `go test`.
//
//	package main
//
//	import "rtcrm.dev/filter"
//
//	func fightLoss(e *filter.Event) bool {
//		result, _ := e.Data.String("result")
//		return result == "loss"
//	}
//
//	func init() { filter.Handle(fightLoss) }
//
//	func main() {}
//
// Build a WASI reactor (the host calls its _initialize, which runs the init functions; main is
// never called):
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o fight-loss.wasm .
//
// A filter of the state gets the player's state, a JSON object the host keeps per (campaign,
// player), "{}" at first; what it leaves is kept for the player's next event when it returns a
// verdict (ABI.md section 9):
//
//	func everyFifthPurchase(e *filter.Event, s filter.State) bool {
//		if e.EventName != "purchase" {
//			return false
//		}
//		n, _ := s.Number("purchases")
//		s["purchases"] = n + 1
//		return int(n+1)%5 == 0
//	}
//
//	func init() { filter.HandleState(everyFifthPurchase) }
//
// The module exports memory, _initialize, rtcrm_alloc, rtcrm_filter, rtcrm_filter_state,
// rtcrm_state_ptr, rtcrm_state_len and rtcrm_abi_version (returning 2), and imports only
// wasi_snapshot_preview1 functions. Every module built with this package is of ABI version 2,
// because //go:wasmexport functions are always exported: one registered with Handle runs in a
// campaign with "state" too and leaves the state as it was. What it writes to os.Stdout or
// os.Stderr goes to the host's log, capped.
package filter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ABIVersion is the ABI version this package implements (the rtcrm_abi_version export): 2, version
// 1 plus per-player state (ABI.md section 9).
const ABIVersion = 2

// Status is what rtcrm_filter returns (ABI.md section 3).
//
// Invariant: errors are negative. Match (1) and NoMatch (0) are the only non-negative codes;
// the host counts a negative code as error kind "exception" and any code above 1 as a trap.
type Status int32

const (
	Match        Status = 1  // the event matches: a trigger
	NoMatch      Status = 0  // no match
	InvalidEvent Status = -1 // the bytes are not a JSON object
	FilterError  Status = -2 // the filter returned an error or panicked
	NoHandler    Status = -3 // no filter registered with Handle or HandleState (call it from an init function)
	InvalidState Status = -4 // the stored state is not a JSON object (the same code in every SDK)
)

// Event is the event as the host received it, with the original system's fields typed. A string
// field that is absent or of another JSON type is left empty: Has tells an absent field from an
// empty one. PlayerID says itself whether it is there (an event without a player is never player
// 0). Raw holds the whole event for anything else (decode it into your own struct).
type Event struct {
	SchemaVersion string   `json:"schema_version"`
	EventID       string   `json:"event_id"`
	SystemType    string   `json:"system_type"`
	SystemName    string   `json:"system_name"`
	Game          string   `json:"game"`
	Market        string   `json:"market"`
	PlayerID      PlayerID `json:"player_id"` // PlayerID.Valid is false when absent
	EventType     string   `json:"event_type"`
	EventName     string   `json:"event_name"`
	EventScope    string   `json:"event_scope"`
	CreatedAt     string   `json:"created_at"` // RFC 3339, as written
	ReceivedAt    string   `json:"received_at"`
	Hostname      string   `json:"hostname"`
	Data          Fields   `json:"data"`
	Context       Fields   `json:"context"`

	// Raw is the event's JSON, exactly as read from Kafka. Valid during the call only.
	Raw []byte `json:"-"`

	// The top-level keys, read from Raw on the first call of Has.
	keys map[string]json.RawMessage
}

// Has reports whether the event has the top-level field key (even if null or of another type
// than its typed field expects), e.g. e.Has("market") tells an absent market from "".
func (e *Event) Has(key string) bool {
	if e.keys == nil {
		e.keys = map[string]json.RawMessage{}
		_ = json.Unmarshal(e.Raw, &e.keys)
	}
	_, ok := e.keys[key]
	return ok
}

// PlayerID is the player_id field: a JSON integer or a string of one, as Value with Valid set.
// Absent, null or anything else, Valid is false (and Value 0): check Valid, or use Get, before
// using Value, so that an event without a player never reads as player 0.
type PlayerID struct {
	Value int64
	Valid bool
}

// Get returns the player id and whether the event has one.
func (p PlayerID) Get() (int64, bool) { return p.Value, p.Valid }

// UnmarshalJSON accepts 12345 and "12345"; anything else leaves the PlayerID not Valid.
func (p *PlayerID) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' {
		s = s[1 : len(s)-1]
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*p = PlayerID{Value: n, Valid: true}
	}
	return nil
}

// Fields is a JSON object, as encoding/json decodes it (numbers are float64).
type Fields map[string]any

// String is the field if it is a string.
func (f Fields) String(key string) (string, bool) {
	v, ok := f[key].(string)
	return v, ok
}

// Number is the field if it is a number.
func (f Fields) Number(key string) (float64, bool) {
	v, ok := f[key].(float64)
	return v, ok
}

// Bool is the field if it is a boolean.
func (f Fields) Bool(key string) (bool, bool) {
	v, ok := f[key].(bool)
	return v, ok
}

// Object is the field if it is an object, else nil (reads on nil Fields find nothing).
func (f Fields) Object(key string) Fields {
	v, _ := f[key].(map[string]any)
	return v
}

// Has reports whether the field is present (even if null).
func (f Fields) Has(key string) bool {
	_, ok := f[key]
	return ok
}

// Parse decodes event bytes as the ABI glue does. Only bytes that are not a JSON object are an
// error; fields of unexpected types are skipped.
func Parse(raw []byte) (*Event, error) {
	e := &Event{Raw: raw}
	if err := json.Unmarshal(raw, e); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) || typeErr.Field == "" {
			return nil, fmt.Errorf("the event is not a JSON object: %w", err)
		}
	}
	return e, nil
}

// Func is a filter: func(*Event) bool, or func(*Event) (bool, error).
type Func interface {
	~func(*Event) bool | ~func(*Event) (bool, error)
}

var handler func(*Event) (bool, error)

// stateHandler is the filter of the state, if HandleState registered one (then handler is nil).
var stateHandler func(*Event, State) (bool, error)

// Handle registers the module's filter. Call it once, from an init function.
func Handle[F Func](f F) {
	switch f := any(f).(type) {
	case func(*Event) bool:
		handler = func(e *Event) (bool, error) { return f(e), nil }
	case func(*Event) (bool, error):
		handler = f
	default:
		panic("unreachable: Func's type set")
	}
	stateHandler = nil
}

// State is a player's state in a campaign with "state" (spec section 12): a JSON object the host
// keeps per (campaign, player), "{}" at first, decoded as encoding/json decodes it (numbers are
// float64). Read it with Fields' accessors (s.Number("purchases")) and write it as a map
// (s["purchases"] = n + 1, delete(s, "x"), clear(s)).
//
// What the filter leaves is kept for the player's next event when it returns a verdict; on an
// error or a panic the host keeps the stored state. Encoded with encoding/json (keys sorted, no
// HTML escaping), it must fit the campaign's state.max_bytes (default 1 KiB), else the
// evaluation fails with error kind "state". A state that encodes to the bytes it was stored as
// is reported unchanged, and costs the host no copy.
type State = Fields

// StateFunc is a filter of the state: func(*Event, State) bool, or func(*Event, State) (bool, error).
type StateFunc interface {
	~func(*Event, State) bool | ~func(*Event, State) (bool, error)
}

// HandleState registers the module's filter, a filter of the state (instead of Handle). Call it
// once, from an init function. In a campaign without "state" it runs on an empty state, which is
// then discarded.
func HandleState[F StateFunc](f F) {
	stateHandler = stateFunc(f)
	handler = nil
}

func stateFunc[F StateFunc](f F) func(*Event, State) (bool, error) {
	switch f := any(f).(type) {
	case func(*Event, State) bool:
		return func(e *Event, s State) (bool, error) { return f(e, s), nil }
	case func(*Event, State) (bool, error):
		return f
	}
	panic("unreachable: StateFunc's type set")
}

// EvalState runs a filter of the state on event bytes and stored-state bytes exactly as
// rtcrm_filter_state does, so it is testable natively: the status, and the new state to store,
// or nil when the host keeps the stored one (the filter left it as it was, or the status is an
// error). Errors and panics are written to stderr (the host's log).
func EvalState[F StateFunc](raw, state []byte, f F) (Status, []byte) {
	return evalState(raw, state, stateFunc(f))
}

// ParseState decodes stored-state bytes as the ABI glue does: a JSON object, else an error.
func ParseState(raw []byte) (State, error) {
	if trimmed := bytes.TrimLeft(raw, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("the stored state is not a JSON object")
	}
	s := State{}
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("the stored state is not a JSON object: %w", err)
	}
	return s, nil
}

// encodeState is the state's JSON as the host stores it: compact, keys sorted, no HTML escaping.
func encodeState(s State) ([]byte, error) {
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

func evalState(raw, stored []byte, f func(*Event, State) (bool, error)) (status Status, kept []byte) {
	if f == nil {
		report("no filter of the state registered: call filter.HandleState from an init function")
		return NoHandler, nil
	}
	e, err := Parse(raw)
	if err != nil {
		report(err.Error())
		return InvalidEvent, nil
	}
	s, err := ParseState(stored)
	if err != nil {
		report(err.Error())
		return InvalidState, nil
	}
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Sprintf("filter panicked: %v", p))
			status, kept = FilterError, nil
		}
	}()
	matched, err := f(e, s)
	if err != nil {
		report("filter error: " + err.Error())
		return FilterError, nil
	}
	status = NoMatch
	if matched {
		status = Match
	}
	out, err := encodeState(s)
	if err != nil {
		report("the state cannot be encoded as JSON: " + err.Error())
		return FilterError, nil
	}
	if bytes.Equal(out, stored) {
		return status, nil
	}
	return status, out
}

// Eval runs a filter on event bytes exactly as rtcrm_filter does, so the mapping from bytes to
// status code is testable natively. Errors and panics are written to stderr (the host's log).
func Eval[F Func](raw []byte, f F) Status {
	switch f := any(f).(type) {
	case func(*Event) bool:
		return eval(raw, func(e *Event) (bool, error) { return f(e), nil })
	case func(*Event) (bool, error):
		return eval(raw, f)
	}
	return NoHandler
}

func eval(raw []byte, f func(*Event) (bool, error)) (status Status) {
	if f == nil {
		report("no filter registered: call filter.Handle from an init function")
		return NoHandler
	}
	e, err := Parse(raw)
	if err != nil {
		report(err.Error())
		return InvalidEvent
	}
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Sprintf("filter panicked: %v", p))
			status = FilterError
		}
	}()
	matched, err := f(e)
	switch {
	case err != nil:
		report("filter error: " + err.Error())
		return FilterError
	case matched:
		return Match
	default:
		return NoMatch
	}
}

func report(msg string) {
	fmt.Fprintln(os.Stderr, "rtcrm-filter:", msg)
}
