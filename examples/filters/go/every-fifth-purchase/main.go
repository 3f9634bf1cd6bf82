// Every fifth purchase of a player triggers: a filter of the player's state (filter ABI version
// 2), for a campaign with "state": {"ttl": "30d", "max_bytes": 256}. Other events leave the state
// as it was. Its JavaScript twin is examples/filters/every-fifth-purchase.js.
package main

import "rtcrm.dev/filter"

func everyFifthPurchase(e *filter.Event, s filter.State) bool {
	if e.EventName != "purchase" {
		return false
	}
	purchases, _ := s.Number("purchases") // absent (the first purchase): 0
	purchases++
	s["purchases"] = purchases
	return int64(purchases)%5 == 0
}

func init() { filter.HandleState(everyFifthPurchase) }

func main() {}
