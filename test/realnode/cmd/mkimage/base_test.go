package main

import (
	"testing"
)

func TestAptMirror(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
`
	disabled := "Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n"
	oneLine := "# comment\ndeb-src http://src.example/debian bookworm main\n" +
		"deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main contrib # note\n"
	for _, c := range []struct {
		name    string
		files   []aptFile
		release string
		want    string
	}{
		{"deb822", []aptFile{{"/etc/apt/sources.list.d/debian.sources", deb822}}, "bookworm", "http://deb.debian.org/debian"},
		{"disabled entries skipped", []aptFile{{"a.sources", disabled}, {"b.sources", deb822}}, "bookworm", "http://deb.debian.org/debian"},
		{"one-line with options", []aptFile{{"/etc/apt/sources.list", oneLine}, {"x.sources", deb822}}, "bookworm", "http://mirror.example/debian"},
		{"other release", []aptFile{{"x.sources", deb822}}, "trixie", ""},
		{"other files ignored", []aptFile{{"x.list.disabled-by-farm", oneLine}}, "bookworm", ""},
	} {
		got, err := aptMirror(c.files, c.release)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

func TestHostRelease(t *testing.T) {
	r, err := hostRelease("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n")
	if err != nil || r != "bookworm" {
		t.Errorf("%q, %v", r, err)
	}
	if _, err := hostRelease("ID=debian\n"); err == nil {
		t.Error("no VERSION_CODENAME: no error")
	}
}

func TestBaseKey(t *testing.T) {
	b := Base{Release: "bookworm", Mirror: "http://deb.debian.org/debian", Packages: []string{"iptables", "nftables"}}
	same := Base{Release: "bookworm", Mirror: "http://deb.debian.org/debian", Packages: []string{"nftables", "iptables"}}
	if b.key() != same.key() {
		t.Error("package order changes the key")
	}
	for _, other := range []Base{
		{Release: "trixie", Mirror: b.Mirror, Packages: b.Packages},
		{Release: b.Release, Mirror: "http://mirror.example/debian", Packages: b.Packages},
		{Release: b.Release, Mirror: b.Mirror, Packages: []string{"iptables"}},
	} {
		if other.key() == b.key() {
			t.Errorf("%+v has the key of %+v", other, b)
		}
	}
}

func TestSlimExclude(t *testing.T) {
	for name, want := range map[string]bool{
		"dev/null":                             true,
		"proc/x":                               true,
		"var/lib/apt/lists/deb.debian.org_x":   true,
		"var/lib/apt/lists/partial/":           true,
		"var/cache/apt/archives/bash_5.deb":    true,
		"var/cache/apt/pkgcache.bin":           true,
		"var/log/dpkg.log":                     true,
		"usr/share/man/man8":                   true,
		"usr/share/locale/de/LC_MESSAGES/x.mo": true,
		"usr/share/doc/bash/README":            true,
		"usr/share/doc/bash/examples":          true,
		"usr/share/doc/libfoo":                 true, // a symlink to another package's docs
		"etc/hostname":                         true,
		"etc/resolv.conf":                      true,
		"dev":                                  false,
		"tmp":                                  false,
		"var/lib/apt/lists":                    false,
		"var/log/apt":                          false,
		"usr/share/doc/bash":                   false,
		"usr/share/doc/bash/copyright":         false,
		"usr/sbin/iptables":                    false,
		"etc/alternatives/iptables":            false,
		"etc/hosts":                            false,
		"var/lib/dpkg/status":                  false,
		"usr/share/ca-certificates/mozilla/x":  false,
	} {
		isDir := name == "dev" || name == "tmp" || name == "var/lib/apt/lists" || name == "var/log/apt" ||
			name == "usr/share/doc/bash" || name == "usr/share/doc/bash/examples" || name == "usr/share/man/man8" ||
			name == "var/lib/apt/lists/partial/"
		if got := slimExclude(name, isDir); got != want {
			t.Errorf("slimExclude(%s, %v) = %v, want %v", name, isDir, got, want)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Errorf("%q", got)
	}
}
