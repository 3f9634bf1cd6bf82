// promtext checks that stdin is valid Prometheus text exposition format 0.0.4, with the parser
// Prometheus's own tools use (github.com/prometheus/common/expfmt), and prints one line per
// metric family: NAME TYPE SAMPLES. Exit 1 with the parser's error otherwise.
//
// Used by tests/tests/metrics_format.rs (go run . < metrics.txt).
package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func main() {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "not Prometheus text format 0.0.4:", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := families[name]
		fmt.Printf("%s %s %d\n", name, f.GetType(), len(f.GetMetric()))
	}
}
