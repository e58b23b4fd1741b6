package connectadapter

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/connectadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/protocodec"
)

// TestReplayInEveryProtocol: in the Connect, gRPC and gRPC-Web protocols,
// a retry gets the first reply, as the procedure's own type with either
// side of its oneof, marked as replayed, and the handler ran once; a key
// first sent in one protocol replays in another.
func TestReplayInEveryProtocol(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		for _, p := range protocols {
			c := f.client(p.opt)
			for _, method := range []string{"card", "bank"} {
				key, ref := p.name+"-"+method, p.name+"-"+method
				first, err := c.CreatePayment(context.Background(), keyed(key, create(ref, method, 100)))
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				again, err := c.CreatePayment(context.Background(), keyed(key, create(ref, method, 100)))
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				if !proto.Equal(first.Msg, again.Msg) {
					t.Fatalf("%s: replayed %v, first reply was %v", p.name, again.Msg, first.Msg)
				}
				if (method == "card") != (again.Msg.GetCard() != nil) || (method == "bank") != (again.Msg.GetBank() != nil) {
					t.Fatalf("%s: the replay lost its oneof: %v", p.name, again.Msg)
				}
				if first.Header().Get(ReplayedHeader) != "" || again.Header().Get(ReplayedHeader) != "true" {
					t.Fatalf("%s: replay marker %q then %q; want none, then true", p.name, first.Header().Get(ReplayedHeader), again.Header().Get(ReplayedHeader))
				}
				if f.charges(ref) != 1 {
					t.Fatalf("%s: %d charges; want 1", p.name, f.charges(ref))
				}
			}
		}
		// A key sent over Connect replays over gRPC and gRPC-Web.
		for _, p := range protocols[1:] {
			again, err := f.client(p.opt).CreatePayment(context.Background(), keyed("connect-card", create("connect-card", "card", 100)))
			if err != nil || again.Msg.GetCard().GetLast4() != "4242" || again.Header().Get(ReplayedHeader) != "true" {
				t.Fatalf("%s replaying a Connect call: %v, %v", p.name, again, err)
			}
		}
		if f.calls.Load() != 6 || f.keys() != 6 {
			t.Fatalf("the handler ran %d times, %d keys; want 6 and 6", f.calls.Load(), f.keys())
		}
	})
}

// TestRefusals: another request under a key, two keys, a bad key, and a
// scope function that returns "" are refused with the table's codes,
// before the handler runs.
func TestRefusals(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, []Option{WithRequestKey(RequestField("request_id"))}, nil)
		for _, p := range protocols {
			c := f.client(p.opt)
			key := "k-" + p.name
			if _, err := c.CreatePayment(context.Background(), keyed(key, create(p.name, "card", 1))); err != nil {
				t.Fatal(err)
			}
			_, err := c.CreatePayment(context.Background(), keyed(key, create(p.name, "card", 2)))
			wantCode(t, p.name+": another amount under the key", err, connect.CodeFailedPrecondition, protocodec.ReasonKeyReused)

			// The field's key names the same record as the header's.
			req := create(p.name, "card", 1)
			req.RequestId = key
			again, err := c.CreatePayment(context.Background(), keyed("", req))
			if err == nil {
				t.Fatalf("%s: the field's key with another request body replayed %v", p.name, again.Msg)
			}
			_, err = c.CreatePayment(context.Background(), keyed("other", req))
			wantCode(t, p.name+": two different keys", err, connect.CodeInvalidArgument, protocodec.ReasonKeyInvalid)
			_, err = c.CreatePayment(context.Background(), keyed(strings.Repeat("x", 256), create("bad", "card", 1)))
			wantCode(t, p.name+": a key of 256 bytes", err, connect.CodeInvalidArgument, protocodec.ReasonKeyInvalid)
		}
		if f.calls.Load() != 3 || f.charges("bad") != 0 {
			t.Fatalf("the handler ran %d times; want once per protocol", f.calls.Load())
		}
		strict := d.serve(t, nil, []Option{WithKeyRequired(), WithScope(func(context.Context, connect.AnyRequest) string { return "" })}, nil)
		_, err := strict.client(nil).CreatePayment(context.Background(), keyed("", create("m", "card", 1)))
		wantCode(t, "no key, under WithKeyRequired", err, connect.CodeInvalidArgument, protocodec.ReasonKeyMissing)
		_, err = strict.client(nil).CreatePayment(context.Background(), keyed("k", create("m", "card", 1)))
		wantCode(t, "a scope function that returns \"\"", err, connect.CodeInternal, protocodec.ReasonScopeInvalid)
	})
}

// TestStoredFailureKeepsItsDetails: a FailedPrecondition with details is
// stored, its writes rolled back, and replayed in every protocol; an
// Unavailable is not stored.
func TestStoredFailureKeepsItsDetails(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		f := d.serve(t, nil, nil, nil)
		for _, p := range protocols {
			c := f.client(p.opt)
			for i := range 2 {
				_, err := c.CreatePayment(context.Background(), keyed("decline", create("d", "decline", 100)))
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition || ce.Message() != "card declined" || len(ce.Details()) != 1 {
					t.Fatalf("%s call %d: %v; want the handler's status with its detail", p.name, i, err)
				}
				v, derr := ce.Details()[0].Value()
				info, ok := v.(*errdetails.ErrorInfo)
				if derr != nil || !ok || info.GetMetadata()["decline_code"] != "insufficient_funds" {
					t.Fatalf("%s call %d: detail %v, %v", p.name, i, v, derr)
				}
				if replayed := ce.Meta().Get(ReplayedHeader) == "true"; replayed != (i == 1 || p.name != "connect") {
					t.Fatalf("%s call %d: replay marker %v", p.name, i, replayed)
				}
			}
			_, err := c.CreatePayment(context.Background(), keyed("u-"+p.name, create("u", "unavailable", 1)))
			if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "the bank is down") {
				t.Fatalf("%s: %v; want the handler's own Unavailable", p.name, err)
			}
		}
		if f.charges("d") != 0 || f.charges("u") != 0 || f.keys() != 1 {
			t.Fatalf("%d, %d charges, %d keys; want the writes rolled back and the one failure stored", f.charges("d"), f.charges("u"), f.keys())
		}
	})
}

// TestTwinsRunOnce: concurrent calls with one key, in all three
// protocols, run the handler once; the first handler waits until every
// call has reached the server.
func TestTwinsRunOnce(t *testing.T) {
	const n = 9
	each(t, func(t *testing.T, d db) {
		o, all := arrivals(n)
		f := d.serve(t, nil, nil, o)
		var once sync.Once
		hook := func() { once.Do(func() { <-all }) }
		f.hook.Store(&hook)
		replies := make([]*testpb.Payment, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			c := f.client(protocols[i%3].opt)
			wg.Go(func() {
				r, err := c.CreatePayment(context.Background(), keyed("twin", create("t", "card", 7)))
				if err == nil {
					replies[i] = r.Msg
				}
				errs[i] = err
			})
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

// TestInProgress: a twin of a running call gets Unavailable with a retry
// hint once the wait runs out.
func TestInProgress(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		if d.kind == "sqlite" {
			t.Skip("on SQLite a twin waits for the one write lock (busy_timeout), not for the key")
		}
		f := d.serve(t, []idempotency.Option{idempotency.WithWait(0)}, nil, nil)
		inHandler, release := make(chan struct{}), make(chan struct{})
		hook := func() { close(inHandler); <-release }
		f.hook.Store(&hook)
		holder := make(chan error, 1)
		go func() {
			_, err := f.client(nil).CreatePayment(context.Background(), keyed("held", create("h", "card", 1)))
			holder <- err
		}()
		<-inHandler
		_, err := f.client(connect.WithGRPC()).CreatePayment(context.Background(), keyed("held", create("h", "card", 1)))
		close(release)
		wantCode(t, "a twin of a running call", err, connect.CodeUnavailable, protocodec.ReasonInProgress)
		if err := <-holder; err != nil {
			t.Fatalf("the holder: %v", err)
		}
		if f.calls.Load() != 1 || f.charges("h") != 1 {
			t.Fatalf("%d runs, %d charges; want 1 and 1", f.calls.Load(), f.charges("h"))
		}
	})
}

// TestClientKeepsItsKey: the client interceptor keys a call once and
// resends that key when it retries, in every protocol: the first attempt
// is refused before the handler, the second's reply is lost after its
// commit, and the third gets the stored reply. Reads get no key; streams
// with a key are refused.
func TestClientKeepsItsKey(t *testing.T) {
	each(t, func(t *testing.T, d db) {
		var (
			mu       sync.Mutex
			keys     []string
			attempts int
		)
		lossy := outer{func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				mu.Lock()
				keys = append(keys, req.Header().Get(KeyHeader))
				attempts++
				n := attempts
				mu.Unlock()
				if !strings.HasSuffix(req.Spec().Procedure, "/CreatePayment") {
					return next(ctx, req)
				}
				switch n % 3 {
				case 1:
					return nil, connect.NewError(connect.CodeUnavailable, errors.New("not taken"))
				case 2:
					_, _ = next(ctx, req)
					return nil, connect.NewError(connect.CodeUnavailable, errors.New("reply lost after the commit"))
				}
				return next(ctx, req)
			}
		}}
		f := d.serve(t, nil, nil, lossy)
		for i, p := range protocols {
			c := f.client(p.opt, connect.WithInterceptors(NewClientInterceptor(ClientRetries(3, 10*time.Millisecond))))
			ref := "r-" + p.name
			r, err := c.CreatePayment(context.Background(), connect.NewRequest(create(ref, "card", 5)))
			if err != nil || r.Msg.GetCard().GetLast4() != "4242" || r.Header().Get(ReplayedHeader) != "true" {
				t.Fatalf("%s: %v, %v; want the stored reply, replayed", p.name, r, err)
			}
			k := keys[3*i:]
			if len(k) != 3 || k[0] == "" || k[1] != k[0] || k[2] != k[0] {
				t.Fatalf("%s: keys of the attempts %q; want one key, three times", p.name, k)
			}
			if f.charges(ref) != 1 {
				t.Fatalf("%s: %d charges; want 1", p.name, f.charges(ref))
			}
		}
		if f.calls.Load() != 3 {
			t.Fatalf("the handler ran %d times; want once per protocol", f.calls.Load())
		}
		c := f.client(nil, connect.WithInterceptors(NewClientInterceptor()))
		if _, err := c.GetPayment(context.Background(), connect.NewRequest(&testpb.GetPaymentRequest{Id: "x"})); err != nil {
			t.Fatal(err)
		}
		if keys[len(keys)-1] != "" || f.sawTx.Load() {
			t.Fatalf("a NO_SIDE_EFFECTS procedure got key %q (in a transaction: %v); want none", keys[len(keys)-1], f.sawTx.Load())
		}
		stream, err := c.WatchPayments(context.Background(), keyed("s", &testpb.GetPaymentRequest{Id: "x"}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		wantCode(t, "a stream with a key", err, connect.CodeUnimplemented, "")
	})
}

// TestErrorForAndOptions: ErrorFor follows protocodec's table, and bad
// options panic with their names.
func TestErrorForAndOptions(t *testing.T) {
	for err, code := range map[error]connect.Code{
		idempotency.ErrParamsMismatch:   connect.CodeFailedPrecondition,
		idempotency.ErrInProgress:       connect.CodeUnavailable,
		idempotency.ErrTransactionEnded: connect.CodeInternal,
		idempotency.ErrInvalidKey:       connect.CodeInvalidArgument,
		idempotency.ErrOutcomeUnknown:   connect.CodeUnavailable,
		context.DeadlineExceeded:        connect.CodeDeadlineExceeded,
	} {
		if got := ErrorFor(err).Code(); got != code {
			t.Errorf("ErrorFor(%v) = %v; want %v", err, got, code)
		}
	}
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{WithProcedures(), "WithProcedures()"},
		{WithProcedures("CreatePayment"), `WithProcedures("CreatePayment")`},
		{WithRequestKey(nil), "WithRequestKey(nil)"},
		{WithScope(nil), "WithScope(nil)"},
		{WithStoredCodes(nil), "WithStoredCodes(nil)"},
		{WithRetryAfter(0), "WithRetryAfter(0s)"},
		{WithLogger(nil), "WithLogger(nil)"},
	} {
		got := func() (msg string) {
			defer func() { msg = toString(recover()) }()
			newConfig([]Option{tc.opt})
			return ""
		}()
		if !strings.HasPrefix(got, "connectadapter: "+tc.want) {
			t.Errorf("got %q; want a panic naming %s", got, tc.want)
		}
	}
}

func toString(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	s, _ := v.(string)
	return s
}
