package main

import (
	"testing"

	"rtcrm.dev/filter"
)

func TestStrictlyAboveTenAndOnlyNumbers(t *testing.T) {
	for event, want := range map[string]filter.Status{
		`{"data":{"player":{"level":11}}}`:   filter.Match,
		`{"data":{"player":{"level":10.5}}}`: filter.Match,
		`{"data":{"player":{"level":10}}}`:   filter.NoMatch,
		`{"data":{"player":{"level":"11"}}}`: filter.NoMatch,
		`{"data":{"player":"11"}}`:           filter.NoMatch,
		`{}`:                                 filter.NoMatch,
	} {
		if got := filter.Eval([]byte(event), nestedThreshold); got != want {
			t.Errorf("%s: got %d, want %d", event, got, want)
		}
	}
}
