package config

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const hostileHead = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
`

// TestFileSizeLimit: a file over MaxFileSize is refused with one problem naming both sizes,
// and Load does not read it: neither a large sparse file nor an endless device.
func TestFileSizeLimit(t *testing.T) {
	big := make([]byte, MaxFileSize+1)
	copy(big, hostileHead)
	_, err := Parse("big.yaml", big)
	want := "big.yaml:1:1: the file is 16777217 bytes, more than the 16777216 bytes (16 MiB) a config file may have: not read"
	if err == nil || err.Error() != want {
		t.Errorf("Parse(MaxFileSize+1 bytes) = %v\nwant %s", err, want)
	}
	if _, err := Parse("ok.yaml", big[:MaxFileSize]); err == nil || strings.Contains(err.Error(), "16 MiB") {
		t.Errorf("Parse(MaxFileSize bytes) = %v; want it read (and refused for its NUL bytes)", err)
	}

	path := filepath.Join(t.TempDir(), "huge.yaml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil { // sparse: 100 MiB that take no disk
		t.Fatal(err)
	}
	f.Close()
	var cfg *Config
	alloc := allocated(func() { cfg, err = Load(path) })
	var perr *Error
	if cfg != nil || !errors.As(err, &perr) || len(perr.Problems) != 1 ||
		perr.Problems[0].String() != path+":1:1: the file is 104857600 bytes, more than the 16777216 bytes (16 MiB) a config file may have: not read" {
		t.Errorf("Load(100 MiB) = %v", err)
	}
	if alloc > 1<<20 {
		t.Errorf("Load(100 MiB) allocated %d bytes: it read the file", alloc)
	}

	if _, err := os.Stat("/dev/zero"); err == nil {
		_, err := ReadFile("/dev/zero")
		if !errors.As(err, &perr) || !strings.Contains(err.Error(), "/dev/zero:1:1: the file is larger than the 16777216 bytes") {
			t.Errorf("ReadFile(/dev/zero) = %v", err)
		}
	}
}

// allocated returns how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
