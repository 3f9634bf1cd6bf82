package main

import (
	"os"
	"testing"

	"rtcrm.dev/filter"
)

func TestALossMatchesAndAWinDoesNot(t *testing.T) {
	for file, want := range map[string]filter.Status{
		"../../../events/fight-loss.json": filter.Match,
		"../../../events/fight-win.json":  filter.NoMatch,
	} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := filter.Eval(raw, fightLoss); got != want {
			t.Errorf("%s: got %d, want %d", file, got, want)
		}
	}
}
