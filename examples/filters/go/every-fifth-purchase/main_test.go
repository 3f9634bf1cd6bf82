package main

import (
	"bufio"
	"os"
	"reflect"
	"testing"

	"rtcrm.dev/filter"
)

func TestTheFifthAndTenthPurchaseOfTheTableTrigger(t *testing.T) {
	f, err := os.Open("../../purchases.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stored := []byte("{}")
	var matched []int
	lines := bufio.NewScanner(f)
	for i := 0; lines.Scan(); i++ {
		status, kept := filter.EvalState(lines.Bytes(), stored, everyFifthPurchase)
		if status == filter.Match {
			matched = append(matched, i)
		} else if status != filter.NoMatch {
			t.Fatalf("line %d: status %d", i+1, status)
		}
		if kept != nil {
			stored = kept
		}
	}
	if !reflect.DeepEqual(matched, []int{5, 12}) || string(stored) != `{"purchases":12}` {
		t.Fatalf("matched %v, final state %s", matched, stored)
	}
}

func TestOtherEventsLeaveTheStateUnchanged(t *testing.T) {
	login, purchase := []byte(`{"event_name":"login"}`), []byte(`{"event_name":"purchase"}`)
	if status, kept := filter.EvalState(login, []byte(`{"purchases":4}`), everyFifthPurchase); status != filter.NoMatch || kept != nil {
		t.Fatalf("login: %d %s", status, kept)
	}
	if status, kept := filter.EvalState(purchase, []byte(`{"purchases":4}`), everyFifthPurchase); status != filter.Match || string(kept) != `{"purchases":5}` {
		t.Fatalf("5th purchase: %d %s", status, kept)
	}
}
