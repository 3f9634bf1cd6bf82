// A filter that writes to stdout: fight-loss, printing every verdict. The output goes to the
// host's log (rate-limited, lines cut, capped per instance), never to the host's own stdout.
package main

import (
	"fmt"

	"rtcrm.dev/filter"
)

func chatty(e *filter.Event) bool {
	result, _ := e.Data.String("result")
	loss := result == "loss"
	fmt.Printf("chatty-go: result=%s match=%t\n", result, loss)
	return loss
}

func init() { filter.Handle(chatty) }

func main() {}
