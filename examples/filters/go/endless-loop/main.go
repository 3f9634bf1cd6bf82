// A filter that misbehaves: it never returns. The host stops it when the evaluation's fuel runs
// out (error kind "fuel"), counts no match, rebuilds the instance and keeps running.
package main

import "rtcrm.dev/filter"

var rounds uint64

func endlessLoop(e *filter.Event) bool {
	// Looks for a field that is never there, forever.
	for !e.Data.Has("never") {
		rounds++
	}
	return false
}

func init() { filter.Handle(endlessLoop) }

func main() {}
