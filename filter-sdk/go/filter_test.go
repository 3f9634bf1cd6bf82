package filter

import (
	"errors"
	"reflect"
	"testing"
)

const seed = `{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss"}}`

func TestEveryOriginalFieldIsTyped(t *testing.T) {
	e, err := Parse([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		SchemaVersion: "2023110110010101", EventID: "7a8d0614-4e8e-4464-b439-36e31441a040",
		SystemType: "game", SystemName: "foe-backend", Game: "foe", Market: "de", PlayerID: PlayerID{Value: 12345, Valid: true},
		EventType: "progress", EventName: "fight", EventScope: "user",
		CreatedAt: "2023-11-20T11:00:00.00Z", ReceivedAt: "2023-11-20T11:00:02.00Z", Hostname: "foe-backend-1.ig.com",
	}
	got := *e
	got.Data, got.Context, got.Raw, got.keys = nil, nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if r, _ := e.Data.String("result"); r != "loss" {
		t.Fatalf("data.result = %q", r)
	}
	if e.Context == nil || len(e.Context) != 0 {
		t.Fatalf("context = %#v", e.Context)
	}
}

func TestMistypedFieldsAreSkipped(t *testing.T) {
	e, err := Parse([]byte(`{"game":7,"player_id":"42","data":[1],"market":"de","context":{"n":{"level":11}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if e.Game != "" || e.PlayerID != (PlayerID{Value: 42, Valid: true}) || e.Data != nil || e.Market != "de" {
		t.Fatalf("%+v", e)
	}
	if l, ok := e.Context.Object("n").Number("level"); !ok || l != 11 {
		t.Fatalf("level %v %v", l, ok)
	}
	if _, ok := e.Data.Object("x").String("y"); ok {
		t.Fatal("read through nil Fields")
	}
}

func TestEvalMapsResultsToStatusCodes(t *testing.T) {
	raw := []byte(seed)
	yes := func(*Event) bool { return true }
	no := func(*Event) bool { return false }
	fails := func(*Event) (bool, error) { return false, errors.New("no level") }
	panics := func(e *Event) bool { return e.Data.Object("player")["level"].(float64) > 10 }
	for _, c := range []struct {
		got, want Status
	}{
		{Eval(raw, yes), Match},
		{Eval(raw, no), NoMatch},
		{Eval(raw, fails), FilterError},
		{Eval(raw, panics), FilterError},
		{Eval([]byte(`[1]`), yes), InvalidEvent},
		{Eval([]byte(`{`), yes), InvalidEvent},
		{eval(raw, nil), NoHandler},
	} {
		if c.got != c.want {
			t.Errorf("got %d, want %d", c.got, c.want)
		}
	}
}

func TestErrorsAreNegative(t *testing.T) {
	for _, s := range []Status{Match, NoMatch, InvalidEvent, FilterError, NoHandler} {
		if (s >= 0) != (s == Match || s == NoMatch) {
			t.Errorf("status %d", s)
		}
	}
}

// Issue 10: an absent player_id is not player 0 (Rust, C and JavaScript say "absent" too), so
// "player_id even" does not match an event without one.
func TestAnAbsentPlayerIdIsNotZero(t *testing.T) {
	even := func(e *Event) bool { id, ok := e.PlayerID.Get(); return ok && id%2 == 0 }
	for raw, want := range map[string]Status{
		`{"player_id":0}`:     Match,
		`{"player_id":"12"}`:  Match,
		`{"player_id":7}`:     NoMatch,
		`{}`:                  NoMatch,
		`{"player_id":null}`:  NoMatch,
		`{"player_id":"abc"}`: NoMatch,
		`{"player_id":1.5}`:   NoMatch,
	} {
		if got := Eval([]byte(raw), even); got != want {
			t.Errorf("%s: got %d, want %d", raw, got, want)
		}
	}
	e, _ := Parse([]byte(`{"market":"","game":null}`))
	if !e.Has("market") || !e.Has("game") || e.Has("hostname") || e.PlayerID.Valid {
		t.Fatalf("Has: market %v game %v hostname %v; player %+v", e.Has("market"), e.Has("game"), e.Has("hostname"), e.PlayerID)
	}
}

func thirdLogin(e *Event, s State) (bool, error) {
	if e.EventName != "login" {
		return false, nil
	}
	n, _ := s.Number("logins")
	s["logins"] = n + 1
	if e.Data.Has("boom") {
		return false, errors.New("boom")
	}
	if e.Data.Has("panic") {
		panic("oops")
	}
	return n+1 == 3, nil
}

func TestEvalStateThreadsThePlayersStateAsTheHostDoes(t *testing.T) {
	login := []byte(`{"event_name":"login","player_id":1}`)
	fight := []byte(`{"event_name":"fight","player_id":1}`)
	stored := []byte("{}")
	var got []Status
	for _, e := range [][]byte{login, fight, login, login, fight, login} {
		status, kept := EvalState(e, stored, thirdLogin)
		if kept != nil {
			stored = kept
		}
		got = append(got, status)
	}
	want := []Status{NoMatch, NoMatch, NoMatch, Match, NoMatch, NoMatch}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if string(stored) != `{"logins":4}` {
		t.Fatalf("final state %s", stored)
	}
}

func TestEvalStateKeepsNothingOnAnErrorAndReportsAnUnchangedState(t *testing.T) {
	for _, c := range []struct {
		event, state string
		status       Status
		kept         string
	}{
		{`{"event_name":"fight"}`, `{"logins":2}`, NoMatch, ""},           // unchanged: nil
		{`{"event_name":"login"}`, `{"logins":2}`, Match, `{"logins":3}`}, // changed
		{`{"event_name":"login","data":{"boom":1}}`, `{}`, FilterError, ""},
		{`{"event_name":"login","data":{"panic":1}}`, `{}`, FilterError, ""},
		{`[1]`, `{}`, InvalidEvent, ""},
		{`{"event_name":"login"}`, `[1]`, InvalidState, ""},
		{`{"event_name":"login"}`, `null`, InvalidState, ""},
		{`{"event_name":"login"}`, `{`, InvalidState, ""},
	} {
		status, kept := EvalState([]byte(c.event), []byte(c.state), thirdLogin)
		if status != c.status || string(kept) != c.kept {
			t.Errorf("%s with %s: got %d %q, want %d %q", c.event, c.state, status, kept, c.status, c.kept)
		}
	}
	// The encoding is compact, sorted and without HTML escapes.
	status, kept := EvalState([]byte(`{}`), []byte(`{"b":1}`), func(e *Event, s State) bool {
		s["a"] = "<&>"
		return true
	})
	if status != Match || string(kept) != `{"a":"<&>","b":1}` {
		t.Fatalf("%d %s", status, kept)
	}
}

func TestStateStatusCodesAreNegative(t *testing.T) {
	if InvalidState >= 0 || InvalidState == NoHandler || InvalidState == FilterError || InvalidState == InvalidEvent {
		t.Fatal(InvalidState)
	}
}
