package grpcadapter

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/protocodec"
)

// TestReplayIsTheSameMessage: a retry gets the first reply, as the
// method's own type with either side of its oneof, marked as replayed,
// and the handler ran once.
func TestReplayIsTheSameMessage(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		for _, method := range []string{"card", "bank"} {
			key := "key-" + method
			var firstHeader, againHeader metadata.MD
			first, err := f.client.CreatePayment(withKey(key), create(method, method, 100), grpc.Header(&firstHeader))
			if err != nil {
				t.Fatal(err)
			}
			again, err := f.client.CreatePayment(withKey(key), create(method, method, 100), grpc.Header(&againHeader))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(first, again) {
				t.Fatalf("replayed %v, first reply was %v", again, first)
			}
			if (method == "card") != (again.GetCard() != nil) || (method == "bank") != (again.GetBank() != nil) {
				t.Fatalf("the replay lost its oneof: %v", again)
			}
			if len(firstHeader.Get(ReplayedMetadata)) != 0 || strings.Join(againHeader.Get(ReplayedMetadata), ",") != "true" {
				t.Fatalf("replay marker: first %v, again %v; want none, then true", firstHeader.Get(ReplayedMetadata), againHeader.Get(ReplayedMetadata))
			}
			if f.charges(method) != 1 {
				t.Fatalf("%d charges for %s; want 1", f.charges(method), method)
			}
		}
		if f.calls.Load() != 2 || f.keys() != 2 {
			t.Fatalf("the handler ran %d times for 2 keys, %d keys stored; want 2 and 2", f.calls.Load(), f.keys())
		}
	})
}

// TestOtherRequestSameKey: a key reused with another request is refused
// with FailedPrecondition, and the handler does not run.
func TestOtherRequestSameKey(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		if _, err := f.client.CreatePayment(withKey("k"), create("a", "card", 100)); err != nil {
			t.Fatal(err)
		}
		_, err := f.client.CreatePayment(withKey("k"), create("a", "card", 200))
		wantCode(t, "another amount under the key", err, codes.FailedPrecondition, protocodec.ReasonKeyReused)
		if f.calls.Load() != 1 || f.charges("a") != 1 {
			t.Fatalf("the handler ran %d times; want 1", f.calls.Load())
		}
	})
}

// TestKeyInRequestField: a key in the AIP-155 request_id field works as
// one in metadata does (the two name the same record), two different keys
// are refused, and a bad key is refused before the database.
func TestKeyInRequestField(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, []Option{WithRequestKey(RequestField("request_id"))}, nil)
		req := create("r", "card", 100)
		req.RequestId = "req-1"
		first, err := f.client.CreatePayment(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var header metadata.MD
		again, err := f.client.CreatePayment(withKey("req-1"), req, grpc.Header(&header))
		if err != nil || !proto.Equal(first, again) || header.Get(ReplayedMetadata) == nil {
			t.Fatalf("the same key in metadata: %v, %v (replayed %v); want the field's reply replayed", again, err, header.Get(ReplayedMetadata))
		}
		_, err = f.client.CreatePayment(withKey("req-2"), req)
		wantCode(t, "two different keys", err, codes.InvalidArgument, protocodec.ReasonKeyInvalid)

		bad := create("bad", "card", 1)
		bad.RequestId = strings.Repeat("x", 256)
		_, err = f.client.CreatePayment(context.Background(), bad)
		wantCode(t, "a key of 256 bytes in the field", err, codes.InvalidArgument, protocodec.ReasonKeyInvalid)
		_, err = f.client.CreatePayment(withKey(strings.Repeat("y", 300)), create("bad", "card", 1))
		wantCode(t, "a key of 300 bytes in metadata", err, codes.InvalidArgument, protocodec.ReasonKeyInvalid)
		ctx := metadata.AppendToOutgoingContext(withKey("one"), KeyMetadata, "two")
		_, err = f.client.CreatePayment(ctx, create("bad", "card", 1))
		wantCode(t, "two keys in metadata", err, codes.InvalidArgument, protocodec.ReasonKeyInvalid)
		if f.calls.Load() != 1 || f.keys() != 1 || f.charges("bad") != 0 {
			t.Fatalf("%d runs, %d keys, %d charges of bad keys; want 1, 1, 0", f.calls.Load(), f.keys(), f.charges("bad"))
		}
	})
}

// TestStoredFailureKeepsItsDetails: a handler's FailedPrecondition is
// stored with its details, its writes rolled back, and replayed.
func TestStoredFailureKeepsItsDetails(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		_, first := f.client.CreatePayment(withKey("k"), create("d", "decline", 100))
		var header metadata.MD
		_, again := f.client.CreatePayment(withKey("k"), create("d", "decline", 100), grpc.Header(&header))
		for i, err := range []error{first, again} {
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition || st.Message() != "card declined" || len(st.Details()) != 2 {
				t.Fatalf("call %d: %v with %d details; want the handler's status with its 2 details", i, err, len(st.Details()))
			}
			info, ok := st.Details()[0].(*errdetails.ErrorInfo)
			if !ok || info.GetReason() != "CARD_DECLINED" || info.GetMetadata()["decline_code"] != "insufficient_funds" {
				t.Fatalf("call %d: first detail %v", i, st.Details()[0])
			}
			if lm, ok := st.Details()[1].(*errdetails.LocalizedMessage); !ok || lm.GetMessage() != "Your card was declined." {
				t.Fatalf("call %d: second detail %v", i, st.Details()[1])
			}
		}
		if !proto.Equal(status.Convert(first).Proto(), status.Convert(again).Proto()) {
			t.Fatalf("the replayed status differs: %v, then %v", status.Convert(first).Proto(), status.Convert(again).Proto())
		}
		if header.Get(ReplayedMetadata) == nil {
			t.Fatal("the replayed failure has no replay marker")
		}
		if f.calls.Load() != 1 || f.charges("d") != 0 || f.keys() != 1 {
			t.Fatalf("%d runs, %d charges, %d keys; want 1 run, its write rolled back, the failure stored", f.calls.Load(), f.charges("d"), f.keys())
		}
	})
}

// TestUnstoredFailureRunsAgain: a code that is not stored rolls back and
// reaches the client as it was; a retry runs the handler again.
func TestUnstoredFailureRunsAgain(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		for range 2 {
			_, err := f.client.CreatePayment(withKey("k"), create("u", "unavailable", 1))
			if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "the bank is down" {
				t.Fatalf("got %v; want the handler's own Unavailable", err)
			}
		}
		if f.calls.Load() != 2 || f.charges("u") != 0 || f.keys() != 0 {
			t.Fatalf("%d runs, %d charges, %d keys; want 2 runs and nothing committed", f.calls.Load(), f.charges("u"), f.keys())
		}
	})
}

// TestTwinsRunOnce: concurrent calls with one key run the handler once;
// every caller gets its reply. The first handler waits until every call
// has reached the server, so the others meet it while it holds the key.
func TestTwinsRunOnce(t *testing.T) {
	const n = 8
	each(t, func(t *testing.T, d db) {
		outer, all := arrivals(n)
		f := d.serve(t, nil, nil, outer)
		var once sync.Once
		hook := func(context.Context, *testpb.CreatePaymentRequest) { once.Do(func() { <-all }) }
		f.hook.Store(&hook)
		replies := make([]*testpb.Payment, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { replies[i], errs[i] = f.client.CreatePayment(withKey("twin"), create("t", "card", 7)) })
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil || !proto.Equal(replies[i], replies[0]) {
				t.Fatalf("call %d: %v, %v; want the one reply", i, replies[i], errs[i])
			}
		}
		if f.calls.Load() != 1 || f.charges("t") != 1 {
			t.Fatalf("the handler ran %d times, %d charges; want 1 and 1", f.calls.Load(), f.charges("t"))
		}
	})
}

// TestInProgress: a call whose twin still holds the key, once the wait
// runs out, gets Unavailable with a retry hint; the twin then commits.
func TestInProgress(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		if d.kind == "sqlite" {
			t.Skip("on SQLite a twin waits for the one write lock (busy_timeout), not for the key")
		}
		f := d.serve(t, []idempotency.Option{idempotency.WithWait(0)}, nil, nil)
		inHandler, release := make(chan struct{}), make(chan struct{})
		hook := func(context.Context, *testpb.CreatePaymentRequest) { close(inHandler); <-release }
		f.hook.Store(&hook)
		holder := make(chan error, 1)
		go func() {
			_, err := f.client.CreatePayment(withKey("held"), create("h", "card", 1))
			holder <- err
		}()
		<-inHandler
		var trailer metadata.MD
		_, err := f.client.CreatePayment(withKey("held"), create("h", "card", 1), grpc.Trailer(&trailer))
		close(release)
		wantCode(t, "a twin of a running call", err, codes.Unavailable, protocodec.ReasonInProgress)
		var hint bool
		for _, det := range status.Convert(err).Details() {
			if ri, ok := det.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
				hint = true
			}
		}
		if !hint || len(trailer.Get("grpc-retry-pushback-ms")) != 1 {
			t.Fatalf("no retry hint: details %v, trailer %v", status.Convert(err).Details(), trailer)
		}
		if err := <-holder; err != nil {
			t.Fatalf("the holder: %v", err)
		}
		if f.calls.Load() != 1 || f.charges("h") != 1 {
			t.Fatalf("%d runs, %d charges; want 1 and 1", f.calls.Load(), f.charges("h"))
		}
	})
}

// TestWithoutKey: a handled call without a key runs in a transaction and
// stores nothing; WithKeyRequired refuses it; a read passes through with
// no transaction; a stream refuses a key and passes without one.
func TestWithoutKey(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		for range 2 {
			if _, err := f.client.CreatePayment(context.Background(), create("n", "card", 1)); err != nil {
				t.Fatal(err)
			}
		}
		if f.calls.Load() != 2 || f.charges("n") != 2 || f.keys() != 0 {
			t.Fatalf("%d runs, %d charges, %d keys; want 2, 2 and none", f.calls.Load(), f.charges("n"), f.keys())
		}
		if _, err := f.client.GetPayment(withKey("read"), &testpb.GetPaymentRequest{Id: "x"}); err != nil || f.sawTx.Load() {
			t.Fatalf("a NO_SIDE_EFFECTS method: %v (in a transaction: %v); want it untouched", err, f.sawTx.Load())
		}
		stream, err := f.client.WatchPayments(withKey("s"), &testpb.GetPaymentRequest{Id: "x"})
		if err == nil {
			_, err = stream.Recv()
		}
		wantCode(t, "a stream with a key", err, codes.Unimplemented, "")
		stream, err = f.client.WatchPayments(context.Background(), &testpb.GetPaymentRequest{Id: "x"})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			t.Fatalf("a stream without a key: %v", err)
		}

		strict := d.serve(t, nil, []Option{WithKeyRequired(), WithScope(func(context.Context) string { return "" })}, nil)
		_, err = strict.client.CreatePayment(context.Background(), create("m", "card", 1))
		wantCode(t, "no key, under WithKeyRequired", err, codes.InvalidArgument, protocodec.ReasonKeyMissing)
		_, err = strict.client.CreatePayment(withKey("k"), create("m", "card", 1))
		wantCode(t, "a scope function that returns \"\"", err, codes.Internal, protocodec.ReasonScopeInvalid)
		if strict.calls.Load() != 0 {
			t.Fatalf("the handler ran %d times; want 0", strict.calls.Load())
		}
	})
}

// TestScopesKeepKeysApart: one key in two scopes names two calls.
func TestScopesKeepKeysApart(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		scope := func(ctx context.Context) string {
			md, _ := metadata.FromIncomingContext(ctx)
			return strings.Join(md.Get("account"), "")
		}
		f := d.serve(t, nil, []Option{WithScope(scope)}, nil)
		for _, acct := range []string{"acct_1", "acct_2", "acct_1"} {
			ctx := metadata.AppendToOutgoingContext(withKey("k"), "account", acct)
			if _, err := f.client.CreatePayment(ctx, create(acct, "card", 1)); err != nil {
				t.Fatal(err)
			}
		}
		if f.calls.Load() != 2 || f.charges("acct_1") != 1 || f.charges("acct_2") != 1 {
			t.Fatalf("%d runs; want one per scope", f.calls.Load())
		}
	})
}
