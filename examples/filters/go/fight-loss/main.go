// The original system's campaign 4711 in Go: players who lost a fight. Its JavaScript twin is
// examples/filters/fight-loss.js.
package main

import "rtcrm.dev/filter"

func fightLoss(e *filter.Event) bool {
	result, _ := e.Data.String("result")
	return result == "loss"
}

func init() { filter.Handle(fightLoss) }

func main() {}
