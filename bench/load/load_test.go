package load

import (
	"context"
	"net"
	"testing"
	"time"
)

// The generator against a real server on loopback: every request answered, counted, bounded.
func TestRateStreamWatchOnLoopback(t *testing.T) {
	line, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Serve(ctx, "pod-x", []net.Listener{line}, sink); close(done) }()
	defer func() { cancel(); <-done }()

	res, err := Rate(context.Background(), RateSpec{Addr: line.Addr().String(), Workers: 2, Duration: 20 * time.Second, Max: 300})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 300 || res.Failed != 0 || res.Replies["pod-x"] != 300 || res.P50 <= 0 || res.P99 < res.P50 {
		t.Fatalf("rate result = %+v", res)
	}
	st, err := Stream(context.Background(), sink.Addr().String(), 100*time.Millisecond)
	if err != nil || st.Bytes == 0 || st.Gbps <= 0 {
		t.Fatalf("stream = %+v, %v", st, err)
	}
	w, err := Watch(context.Background(), line.Addr().String(), "pod-x", time.Millisecond, 10*time.Second)
	if err != nil || w.Attempts != 1 {
		t.Fatalf("watch = %+v, %v", w, err)
	}
	if _, err := Watch(context.Background(), line.Addr().String(), "pod-y", time.Millisecond, 100*time.Millisecond); err == nil {
		t.Fatal("watch for a pod that never answers succeeded")
	}
	if _, err := Rate(context.Background(), RateSpec{Addr: "x"}); err == nil {
		t.Fatal("a rate spec without bounds was accepted")
	}
}
