package grpcadapter

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
)

// lossy is a server interceptor, outside the idempotency interceptor,
// that fails the first two attempts of CreatePayment with Unavailable: the
// first before the handler runs (a server that could not take it), the
// second after the handler committed (its reply lost, as when a proxy cuts
// the connection after the commit). It records the key of every attempt.
type lossy struct {
	faults bool
	mu     sync.Mutex
	keys   []string
}

func (l *lossy) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	l.mu.Lock()
	l.keys = append(l.keys, strings.Join(metadata.ValueFromIncomingContext(ctx, KeyMetadata), ","))
	n := len(l.keys)
	l.mu.Unlock()
	if !l.faults || info.FullMethod != testpb.Payments_CreatePayment_FullMethodName {
		return handler(ctx, req)
	}
	switch n {
	case 1:
		return nil, status.Error(codes.Unavailable, "not taken")
	case 2:
		_, _ = handler(ctx, req)
		return nil, status.Error(codes.Unavailable, "reply lost after the commit")
	}
	return handler(ctx, req)
}

// TestClientKeepsItsKeyAcrossRetries: the client interceptor keys a call
// once; grpc-go's retry policy (RetryServiceConfig), and the
// interceptor's own retries, resend the same key, so the server's handler
// runs once although its reply was lost after it committed, and the last
// attempt gets the stored reply.
func TestClientKeepsItsKeyAcrossRetries(t *testing.T) {
	clients := []struct {
		name string
		dial []grpc.DialOption
	}{
		{"grpc-go retry policy", []grpc.DialOption{
			grpc.WithDefaultServiceConfig(RetryServiceConfig),
			grpc.WithChainUnaryInterceptor(UnaryClientInterceptor()),
		}},
		{"interceptor retries", []grpc.DialOption{
			grpc.WithDisableRetry(),
			grpc.WithChainUnaryInterceptor(UnaryClientInterceptor(ClientRetries(5, 10*time.Millisecond))),
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			each(t, func(t *testing.T, d db) {
				l := &lossy{faults: true}
				f := d.serve(t, nil, nil, l.intercept, c.dial...)
				var header metadata.MD
				p, err := f.client.CreatePayment(context.Background(), create("r", "card", 5), grpc.Header(&header))
				if err != nil {
					t.Fatalf("after two failed attempts: %v (keys %q)", err, l.keys)
				}
				if p.GetCard().GetLast4() != "4242" || header.Get(ReplayedMetadata) == nil {
					t.Fatalf("got %v (replayed %v); want the stored reply, replayed", p, header.Get(ReplayedMetadata))
				}
				if len(l.keys) != 3 || l.keys[0] == "" || l.keys[1] != l.keys[0] || l.keys[2] != l.keys[0] {
					t.Fatalf("keys of the attempts: %q; want one key, three times", l.keys)
				}
				if f.calls.Load() != 1 || f.charges("r") != 1 {
					t.Fatalf("the handler ran %d times, %d charges; want 1 and 1", f.calls.Load(), f.charges("r"))
				}
				// A second call is another operation: another key.
				if _, err := f.client.CreatePayment(context.Background(), create("r2", "card", 5)); err != nil {
					t.Fatal(err)
				}
				if k := l.keys[len(l.keys)-1]; k == "" || k == l.keys[0] {
					t.Fatalf("the next call's key %q; want a new one", k)
				}
			})
		})
	}
}

// TestClientKeySelection: reads get no key, a caller's own key and a
// request's own key are kept.
func TestClientKeySelection(t *testing.T) {
	l := &lossy{}
	var d db
	for _, x := range dbs() {
		if x.name == "sqlite" {
			d = x
		}
	}
	f := d.serve(t, nil, []Option{WithRequestKey(RequestField("request_id"))}, l.intercept,
		grpc.WithChainUnaryInterceptor(UnaryClientInterceptor(ClientRequestKey(RequestField("request_id")))))
	if _, err := f.client.GetPayment(context.Background(), &testpb.GetPaymentRequest{Id: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CreatePayment(withKey("mine"), create("a", "card", 1)); err != nil {
		t.Fatal(err)
	}
	req := create("b", "card", 1)
	req.RequestId = "from-request"
	if _, err := f.client.CreatePayment(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	want := []string{"", "mine", ""}
	if strings.Join(l.keys, "|") != strings.Join(want, "|") {
		t.Fatalf("metadata keys %q; want %q", l.keys, want)
	}
	if f.keys() != 2 {
		t.Fatalf("%d keys stored; want 2", f.keys())
	}
}
