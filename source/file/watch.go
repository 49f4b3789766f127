// Package file is the standalone source: it watches a config file and delivers each new valid
// config.Config, or the problems of an invalid one, so that the daemon can rebuild its desired
// state. It follows what editors and Kubernetes do to files: in-place writes, a new file
// renamed over the old one, and ConfigMap volumes that swap a `..data` symlink; bursts of
// events are debounced into one read.
package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/svcproxy/svcproxy/config"
)

// DefaultDebounce is how long the file must stay quiet before it is read again.
const DefaultDebounce = 200 * time.Millisecond

// Options tune Watch.
type Options struct {
	// Debounce is how long to wait after the last change before reading the file (default
	// DefaultDebounce).
	Debounce time.Duration
	// Reload, when it receives, makes Watch read the file and deliver it even if it did not
	// change (the daemon sends SIGHUP here).
	Reload <-chan struct{}
	// Logger receives watch errors (default slog.Default()).
	Logger *slog.Logger
	// Initial, when set, is a config the caller already parsed from InitialData: the first
	// read delivers it without parsing again when the file still holds those bytes (a large
	// file is parsed once at start, not twice).
	Initial     *config.Config
	InitialData []byte

	// onRead, for tests, is called after each read of the file with whether it delivered.
	onRead func(delivered bool)
}

// Watch reads the config file at path, delivers it, and then delivers it again each time its
// content changes, until ctx is done. deliver gets (cfg, nil) for a valid file and (nil, err)
// otherwise: err is a *config.Error listing every problem of an invalid file, or the error of
// reading it (a missing file, say); the caller is expected to keep its last good state then.
// A change that leaves the bytes as they were is not delivered again, unless it comes through
// opts.Reload. deliver is called from Watch's goroutine, one call at a time.
//
// Watch returns nil when ctx is done, and an error when the directory holding path cannot be
// watched.
func Watch(ctx context.Context, path string, opts Options, deliver func(*config.Config, error)) error {
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config %s: %w", path, err)
	}
	defer w.Close()

	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("watch config %s: %w", path, err)
	}
	// The directory of path is watched, not the file: a file renamed over path, or a
	// symlink swapped in the directory, replaces the inode a file watch would follow.
	dir := filepath.Dir(abs)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch config directory %s: %w", dir, err)
	}
	s := &state{path: path, abs: abs, dir: dir, w: w, log: log, onRead: opts.onRead,
		initial: opts.Initial, initialData: opts.InitialData}
	s.follow()

	s.read(true, deliver)
	timer := time.NewTimer(opts.Debounce)
	if !timer.Stop() {
		<-timer.C
	}
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("config watcher closed")
			}
			if !s.relevant(ev) {
				continue
			}
			// Restart the quiet period: a burst of events makes one read.
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(opts.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("config watcher closed")
			}
			log.Warn("config watch error", "path", path, "err", err)
		case <-timer.C:
			s.follow()
			s.read(false, deliver)
		case <-opts.Reload:
			s.follow()
			s.read(true, deliver)
		}
	}
}

// state is what Watch knows between events.
type state struct {
	path, abs, dir string
	w              *fsnotify.Watcher
	log            *slog.Logger
	onRead         func(delivered bool)
	// target is the directory of the file path resolves to through symlinks, also watched when
	// it is not dir.
	target string
	// What was delivered last: the content read (haveData), or the read error.
	delivered bool
	haveData  bool
	last      []byte
	lastErr   string
	// initial is the caller's already parsed config of initialData (Options.Initial), used
	// once by the first read.
	initial     *config.Config
	initialData []byte
}

// follow watches the directory of the file path currently resolves to, so that a file
// symlinked from elsewhere is followed too.
func (s *state) follow() {
	real, err := filepath.EvalSymlinks(s.abs)
	if err != nil {
		return
	}
	t := filepath.Dir(real)
	if t == s.target {
		return
	}
	if s.target != "" && s.target != s.dir {
		_ = s.w.Remove(s.target)
	}
	s.target = ""
	if t == s.dir {
		return
	}
	if err := s.w.Add(t); err != nil {
		s.log.Warn("cannot watch the directory of the config file's target", "dir", t, "err", err)
		return
	}
	s.target = t
}

// relevant reports whether ev may have changed what path reads. In the directory of path every
// event counts (a ConfigMap swaps `..data`, not the file's own name); in the target's
// directory only events on the target file do.
func (s *state) relevant(ev fsnotify.Event) bool {
	d := filepath.Dir(ev.Name)
	if d == s.dir {
		return true
	}
	if d == s.target {
		real, err := filepath.EvalSymlinks(s.abs)
		return err != nil || real == ev.Name || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) || ev.Has(fsnotify.Create)
	}
	return false
}

// read reads and parses the file and delivers the result, unless nothing changed since the
// last delivery and force is false.
func (s *state) read(force bool, deliver func(*config.Config, error)) {
	delivered := s.readOnce(force, deliver)
	if s.onRead != nil {
		s.onRead(delivered)
	}
}

func (s *state) readOnce(force bool, deliver func(*config.Config, error)) bool {
	// config.ReadFile refuses a file over config.MaxFileSize without reading it whole (a
	// 100 MB file, or a device that never ends, would otherwise be read into memory first).
	data, err := config.ReadFile(s.path)
	if err != nil {
		msg := err.Error()
		if !force && s.delivered && !s.haveData && s.lastErr == msg {
			return false
		}
		s.delivered, s.haveData, s.last, s.lastErr = true, false, nil, msg
		deliver(nil, fmt.Errorf("read config: %w", err))
		return true
	}
	if !force && s.delivered && s.haveData && bytes.Equal(data, s.last) {
		return false
	}
	s.delivered, s.haveData, s.last, s.lastErr = true, true, data, ""
	if init := s.initial; init != nil {
		s.initial = nil
		if bytes.Equal(data, s.initialData) {
			s.initialData = nil
			deliver(init, nil)
			return true
		}
		s.initialData = nil
	}
	cfg, err := config.Parse(s.path, data)
	if err != nil {
		deliver(nil, err)
		return true
	}
	deliver(cfg, nil)
	return true
}
