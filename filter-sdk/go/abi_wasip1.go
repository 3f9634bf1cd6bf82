//go:build wasip1

// The ABI exports. Go runs them on the goroutine that called _initialize; the host never calls
// an instance concurrently.

package filter

import "unsafe"

// buffer is the one event buffer: kept between calls, replaced when an event is larger than any
// before. A package variable, so the garbage collector (which does not move objects) keeps it.
var buffer []byte

//go:wasmexport rtcrm_abi_version
func rtcrmAbiVersion() int32 { return ABIVersion }

//go:wasmexport rtcrm_alloc
func rtcrmAlloc(n int32) int32 {
	if n < 0 {
		return 0
	}
	if len(buffer) < int(n) || buffer == nil {
		buffer = make([]byte, max(int(n), 1024))
	}
	return int32(uintptr(unsafe.Pointer(unsafe.SliceData(buffer))))
}

//go:wasmexport rtcrm_filter
func rtcrmFilter(ptr, n int32) int32 {
	// The host passes back the buffer rtcrm_alloc returned.
	if n < 0 || int(n) > len(buffer) || uintptr(ptr) != uintptr(unsafe.Pointer(unsafe.SliceData(buffer))) {
		report("rtcrm_filter called with a buffer rtcrm_alloc did not return")
		return int32(InvalidEvent)
	}
	return int32(eval(buffer[:n], handler))
}
