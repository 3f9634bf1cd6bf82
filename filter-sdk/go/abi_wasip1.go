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
	if f := stateHandler; f != nil {
		// A campaign without state: the filter of the state runs on an empty state, discarded.
		return int32(eval(buffer[:n], func(e *Event) (bool, error) { return f(e, State{}) }))
	}
	return int32(eval(buffer[:n], handler))
}

// ---- ABI version 2: per-player state (ABI.md section 9) ----

// stateOut is the new state's JSON, kept until the next call (the host copies it out right
// after rtcrm_filter_state returns); stateLen is its length for rtcrm_state_len, -1 while the
// stored state stays.
var (
	stateOut []byte
	stateLen int32 = -1
)

//go:wasmexport rtcrm_filter_state
func rtcrmFilterState(ptr, n, statePtr, stateN int32) int32 {
	stateLen = -1
	// The host passes back the buffer rtcrm_alloc returned: the event, then the state.
	base := uintptr(unsafe.Pointer(unsafe.SliceData(buffer)))
	if n < 0 || stateN < 0 || int(n)+int(stateN) > len(buffer) || uintptr(ptr) != base || uintptr(statePtr) != base+uintptr(n) {
		report("rtcrm_filter_state called with a buffer rtcrm_alloc did not return")
		return int32(InvalidEvent)
	}
	if stateHandler == nil {
		// A filter of the event only: the state stays as it was.
		return int32(eval(buffer[:n], handler))
	}
	status, kept := evalState(buffer[:n], buffer[n:n+stateN], stateHandler)
	if kept != nil {
		stateOut, stateLen = kept, int32(len(kept))
	}
	return int32(status)
}

//go:wasmexport rtcrm_state_ptr
func rtcrmStatePtr() int32 { return int32(uintptr(unsafe.Pointer(unsafe.SliceData(stateOut)))) }

//go:wasmexport rtcrm_state_len
func rtcrmStateLen() int32 { return stateLen }
