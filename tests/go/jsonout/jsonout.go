// Package jsonout is the output contract of the Go test applications: stdout
// carries only JSON objects, one per line; errors go to stderr, prefixed with
// the program's name.
package jsonout

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// out is the only writer of stdout: every line on it is one JSON object.
var (
	out     = os.Stdout
	outMu   sync.Mutex
	program = "app"
)

// Claim keeps the real stdout for JSON and points file descriptor 1 at
// stderr, so that anything a library prints to stdout lands on stderr.
func Claim(name string) {
	program = name
	fd, err := syscall.Dup(1)
	if err != nil {
		return
	}
	out = os.NewFile(uintptr(fd), "/dev/stdout")
	if err := syscall.Dup3(2, 1, 0); err != nil {
		fmt.Fprintf(os.Stderr, "%s: warning: cannot redirect fd 1 to stderr: %v\n", program, err)
	}
}

// Emit writes v as one JSON line on the real stdout.
func Emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		Fatalf("encode output: %v", err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	out.Write(append(b, '\n'))
}

// Fatalf says what failed on stderr and exits with status 1; no JSON line
// follows it, whichever goroutine calls it (a watchdog, say).
func Fatalf(format string, args ...any) {
	outMu.Lock()
	fmt.Fprintf(os.Stderr, program+": error: "+format+"\n", args...)
	os.Exit(1)
}
