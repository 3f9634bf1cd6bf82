// A numeric threshold on a nested data field: players past level 10. Its JavaScript twin is
// examples/filters/nested-threshold.js; as there, only a JSON number counts.
package main

import "rtcrm.dev/filter"

const minLevel = 10

func nestedThreshold(e *filter.Event) bool {
	level, ok := e.Data.Object("player").Number("level")
	return ok && level > minLevel
}

func init() { filter.Handle(nestedThreshold) }

func main() {}
