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
		SystemType: "game", SystemName: "foe-backend", Game: "foe", Market: "de", PlayerID: 12345,
		EventType: "progress", EventName: "fight", EventScope: "user",
		CreatedAt: "2023-11-20T11:00:00.00Z", ReceivedAt: "2023-11-20T11:00:02.00Z", Hostname: "foe-backend-1.ig.com",
	}
	got := *e
	got.Data, got.Context, got.Raw = nil, nil, nil
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
	if e.Game != "" || e.PlayerID != 42 || e.Data != nil || e.Market != "de" {
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
