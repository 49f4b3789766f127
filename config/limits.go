package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// Limits on what a config file may hold, so that any input (a file caught half-written, binary
// garbage, a hostile one) ends in problems within bounded time and memory instead of taking
// the process down: `svcproxy check`, a reload and a start all read the file through Parse.
// docs/config.md ("Limits") and docs/reliability.md ("Hostile config input") explain them.
const (
	// MaxFileSize is the largest config file read, in bytes: 16 MiB (the 10,000-service
	// benchmark file is 8.8 MB).
	MaxFileSize = 16 << 20
)

// ReadFile reads the config file at path, at most MaxFileSize bytes of it: a larger file (or
// an endless one, a device) is refused with an *Error without being read whole. Other
// failures are returned as they are.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	if size > MaxFileSize {
		return nil, &Error{Problems: []Problem{tooBig(path, size)}}
	}
	var buf bytes.Buffer
	if size >= 0 {
		buf.Grow(int(size) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileSize+1)); err != nil {
		return nil, err
	}
	if buf.Len() > MaxFileSize {
		if size <= MaxFileSize {
			size = -1 // grew while read, or not a regular file
		}
		return nil, &Error{Problems: []Problem{tooBig(path, size)}}
	}
	return buf.Bytes(), nil
}

// tooBig is the problem of a file over MaxFileSize; size is -1 when unknown.
func tooBig(file string, size int64) Problem {
	what := "the file is larger than"
	if size >= 0 {
		what = fmt.Sprintf("the file is %d bytes, more than", size)
	}
	return Problem{File: file, Line: 1, Column: 1,
		Message: fmt.Sprintf("%s the %d bytes (16 MiB) a config file may have: not read", what, MaxFileSize)}
}
