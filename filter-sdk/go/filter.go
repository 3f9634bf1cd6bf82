// Package filter writes rtcrm campaign filters in Go. A filter is a plain function of the event;
// the package implements the filter ABI, version 1 (filter-sdk/ABI.md), for GOOS=wasip1
// GOARCH=wasm with //go:wasmexport, and everything else builds natively so filters unit-test
// with `go test`.
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
// The module exports memory, _initialize, rtcrm_alloc, rtcrm_filter and rtcrm_abi_version, and
// imports only wasi_snapshot_preview1 functions. What it writes to os.Stdout or os.Stderr goes to
// the host's log, capped.
package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ABIVersion is the ABI version this package implements (the rtcrm_abi_version export).
const ABIVersion = 1

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
	NoHandler    Status = -3 // no filter registered with Handle (call it from an init function)
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
