package tracer

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRejectsUnknownSyntax(t *testing.T) {
	for _, rule := range []string{
		"-A X -m set --match-set foo src -j ACCEPT",
		"-A X -p icmp -j ACCEPT",
		"-A X -j LOG",
		"-A X -m statistic --mode nth --every 2 -j ACCEPT",
		"-A X -p tcp --dport 80 -j ACCEPT",          // --dport without -m tcp
		"-A X -j DNAT --to-destination 10.0.0.1:80", // DNAT to a port without -p
		"-A X -s 10.0.0.1/8 -j ACCEPT",              // host bits set
		"-A X ! -p tcp -j ACCEPT",
		"-A X -m comment --comment \"unterminated -j ACCEPT",
		"-A X -m recent --rcheck -j ACCEPT",
		"-A X -j NOSUCHCHAIN",
	} {
		table := "nat"
		if strings.Contains(rule, "LOG") {
			table = "filter"
		}
		rs := New()
		before := rs.Dump()
		err := rs.Restore("*" + table + "\n:X - [0:0]\n" + rule + "\nCOMMIT\n")
		if err == nil {
			t.Errorf("%q accepted", rule)
		}
		if rs.Dump() != before {
			t.Errorf("%q: a failed restore changed the table", rule)
		}
	}
}

func TestRestoreSemantics(t *testing.T) {
	rs, err := Parse("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j RETURN\n-A PREROUTING -j A\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	// Deleting a referenced chain fails, and leaves the table as it was.
	if err := rs.Restore("*nat\n:B - [0:0]\n-X B\nCOMMIT\n"); err == nil {
		t.Fatal("deleted a referenced chain")
	}
	if len(rs.Chain("nat", "B").Rules) != 1 {
		t.Fatal("failed restore flushed B")
	}
	// Flushing the referrer first makes it deletable; --noflush keeps other chains.
	if err := rs.Restore("*nat\n:A - [0:0]\n:B - [0:0]\n-X B\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if rs.Chain("nat", "B") != nil || rs.Chain("nat", "A") == nil || len(rs.Chain("nat", "PREROUTING").Rules) != 1 {
		t.Fatalf("unexpected state:\n%s", rs.Dump())
	}
	// -I with a position, -D by specification.
	if err := rs.Restore("*nat\n-I PREROUTING 2 -s 10.0.0.2/32 -j RETURN\n-I PREROUTING 1 -s 10.0.0.1/32 -j RETURN\n-D PREROUTING -j A\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	pre := rs.Chain("nat", "PREROUTING").Rules
	if len(pre) != 2 || pre[0].Text != "-s 10.0.0.1/32 -j RETURN" || pre[1].Text != "-s 10.0.0.2/32 -j RETURN" {
		t.Fatalf("after -I/-D:\n%s", rs.Dump())
	}
	if err := rs.Restore("*nat\n-D PREROUTING -j A\nCOMMIT\n"); err == nil {
		t.Fatal("-D of a missing rule accepted")
	}
}

func TestTraceBranches(t *testing.T) {
	rs, err := Parse(`*nat
:S - [0:0]
:E1 - [0:0]
:E2 - [0:0]
-A PREROUTING -d 10.96.0.1/32 -p udp -m udp --dport 53 -j S
-A S -m statistic --mode random --probability 0.2500000000 -j E1
-A S -j E2
-A E1 -p udp -j DNAT --to-destination 10.244.0.1:53
-A E2 -j MARK --or-mark 0x8000
-A E2 -p udp -j DNAT --to-destination 10.244.0.2:53
-A POSTROUTING -m mark --mark 0x8000/0x8000 -j MASQUERADE --random-fully
COMMIT
`)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rs.Trace(Packet{Src: netip.MustParseAddr("10.1.0.1"), Dst: netip.MustParseAddr("10.96.0.1"), Proto: "udp", DPort: 53})
	if err != nil {
		t.Fatal(err)
	}
	tg := res.Targets()
	a, b := netip.MustParseAddrPort("10.244.0.1:53"), netip.MustParseAddrPort("10.244.0.2:53")
	if len(tg) != 2 || tg[a] != 0.25 || tg[b] != 0.75 {
		t.Fatalf("targets %v", tg)
	}
	for _, o := range res.Outcomes {
		if o.Masquerade != (o.DNAT == b) {
			t.Fatalf("masquerade wrong:\n%s", res)
		}
	}
}
