package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
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

var (
	yamlLine      = regexp.MustCompile(`line (\d+)`)
	unknownAnchor = regexp.MustCompile(`unknown anchor '(.*)' referenced`)
)

// yamlProblem turns an error of the YAML decoder into a problem at the line the error names.
// The decoder leaves the line out of errors on the first line, of errors about the characters
// of the file and of unknown anchors: those are located here.
func yamlProblem(file string, data []byte, err error) Problem {
	msg := err.Error()
	at := pos{0, 1}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		at.line, _ = strconv.Atoi(m[1])
	}
	if at.line <= 0 {
		at.line = 1
		switch {
		case strings.Contains(msg, "control characters are not allowed"), strings.Contains(msg, "UTF-8"):
			if off, r, ok := badChar(data); ok {
				at = offsetPos(data, off)
				if r == utf8.RuneError {
					msg += fmt.Sprintf(" (byte 0x%02x is not UTF-8)", data[off])
				} else {
					msg += fmt.Sprintf(" (character %U)", r)
				}
			}
		default:
			if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
				if off, ok := findAlias(data, m[1]); ok {
					at = offsetPos(data, off)
				}
			}
		}
	}
	return Problem{File: file, Line: at.line, Column: at.col, Message: "invalid YAML: " + msg}
}

// badChar returns the offset of the first character of data the YAML reader refuses (invalid
// UTF-8, or a control character), and the character (utf8.RuneError for invalid UTF-8).
func badChar(data []byte) (int, rune, bool) {
	for off := 0; off < len(data); {
		r, n := utf8.DecodeRune(data[off:])
		switch {
		case r == utf8.RuneError && n <= 1:
			return off, r, true
		case r == 0x09 || r == 0x0A || r == 0x0D || (r >= 0x20 && r <= 0x7E) || r == 0x85 ||
			(r >= 0xA0 && r <= 0xD7FF) || (r >= 0xE000 && r <= 0xFFFD) || (r >= 0x10000 && r <= 0x10FFFF):
		default:
			return off, r, true
		}
		off += n
	}
	return 0, 0, false
}

// findAlias returns the offset of the first alias `*name` in data (a best guess: it may be in
// a comment or a quoted string).
func findAlias(data []byte, name string) (int, bool) {
	needle := []byte("*" + name)
	for from := 0; ; {
		i := bytes.Index(data[from:], needle)
		if i < 0 {
			return 0, false
		}
		i += from
		end := i + len(needle)
		before := i == 0 || strings.IndexByte(" \t\r\n[{,", data[i-1]) >= 0
		after := end == len(data) || strings.IndexByte(" \t\r\n]},", data[end]) >= 0
		if before && after {
			return i, true
		}
		from = i + 1
	}
}

// offsetPos returns the line and column (1-based, in characters, as the YAML decoder counts
// them) of byte offset off of data.
func offsetPos(data []byte, off int) pos {
	line, start := 1, 0
	for i := 0; i < off; i++ {
		if data[i] == '\n' || (data[i] == '\r' && (i+1 >= len(data) || data[i+1] != '\n')) {
			line, start = line+1, i+1
		}
	}
	return pos{line, utf8.RuneCount(data[start:off]) + 1}
}
