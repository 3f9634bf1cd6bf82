// The Go example filters, built by filter-sdk/build-examples.sh with
// GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared, and unit-tested natively with `go test ./...`.
module rtcrm.dev/filter-examples

go 1.24

require rtcrm.dev/filter v0.0.0

replace rtcrm.dev/filter => ../../../filter-sdk/go
