package connectadapter

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/connectadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/connectadapter/internal/testpb/testpbconnect"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// protocols are Connect's three, as client options.
var protocols = []struct {
	name string
	opt  connect.ClientOption
}{
	{"connect", nil},
	{"grpc", connect.WithGRPC()},
	{"grpcweb", connect.WithGRPCWeb()},
}

// db is one store under test, with the charges table (testdb.Charges).
type db struct {
	name  string
	kind  string
	serve func(t *testing.T, sopts []idempotency.Option, opts []Option, outer connect.Interceptor) *fixture
}

// dbs are the stores the adapter runs on: the sqlx store on SQLite,
// Postgres (lib/pq and pgx stdlib) and MySQL or MariaDB, and the pgx store.
func dbs() []db {
	var out []db
	for _, b := range testdb.Backends() {
		if b.Server == "tidb" {
			continue
		}
		out = append(out, db{name: b.Name, kind: b.Kind, serve: func(t *testing.T, sopts []idempotency.Option, opts []Option, outer connect.Interceptor) *fixture {
			e := conformance.OpenSQL(t, b)
			return start(t, e.NewStore(t, sopts...), e.Charge, func(q string) int { return e.Count(t, q) }, opts, outer)
		}})
	}
	return append(out, db{name: "pgx-native", kind: "postgres", serve: servePgx})
}

// each runs test on every store, in parallel.
func each(t *testing.T, test func(t *testing.T, d db)) {
	t.Helper()
	for _, d := range dbs() {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			test(t, d)
		})
	}
}

func servePgx(t *testing.T, sopts []idempotency.Option, opts []Option, outer connect.Interceptor) *fixture {
	t.Helper()
	b := testdb.Backend{Name: "pgx-native", Driver: "pgx", Kind: "postgres"}
	pool, err := pgxpool.New(context.Background(), b.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgxstore.Up(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), testdb.Charges); err != nil {
		t.Fatal(err)
	}
	s, err := pgxstore.New(pool, sopts...)
	if err != nil {
		t.Fatal(err)
	}
	charge := func(ctx context.Context, tx pgx.Tx, ref string, amount int) error {
		_, err := tx.Exec(ctx, `INSERT INTO charges (ref, amount) VALUES ($1, $2)`, ref, amount)
		return err
	}
	count := func(q string) int {
		var n int
		if err := pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	return start(t, s, charge, count, opts, outer)
}

// fixture is the test service on an HTTP/2 TLS server on 127.0.0.1.
type fixture struct {
	url   string
	http  *http.Client
	calls atomic.Int64 // runs of CreatePayment's handler
	count func(query string) int
	hook  atomic.Pointer[func()]
	sawTx atomic.Bool
}

// client is a client of the fixture in protocol, with opts.
func (f *fixture) client(protocol connect.ClientOption, opts ...connect.ClientOption) testpbconnect.PaymentsClient {
	if protocol != nil {
		opts = append(opts, protocol)
	}
	return testpbconnect.NewPaymentsClient(f.http, f.url, opts...)
}

func (f *fixture) charges(ref string) int {
	return f.count(`SELECT COUNT(*) FROM charges WHERE ref = '` + ref + `'`)
}

func (f *fixture) keys() int { return f.count(`SELECT COUNT(*) FROM idempotency_keys`) }

func start[TTx any](t *testing.T, s *idempotency.TxStore[TTx], charge func(context.Context, TTx, string, int) error, count func(string) int, opts []Option, outer connect.Interceptor) *fixture {
	t.Helper()
	f := &fixture{count: count}
	interceptors := []connect.Interceptor{NewInterceptorFor(s, opts...)}
	if outer != nil {
		interceptors = append([]connect.Interceptor{outer}, interceptors...)
	}
	mux := http.NewServeMux()
	mux.Handle(testpbconnect.NewPaymentsHandler(&payments[TTx]{f: f, charge: charge}, connect.WithInterceptors(interceptors...)))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url, f.http = srv.URL, srv.Client()
	return f
}

// payments is the test service; CreatePayment answers by req.Method:
// "card" and "bank" (the oneof's two sides), "decline" (FailedPrecondition
// with details, stored), "unavailable" (not stored).
type payments[TTx any] struct {
	f      *fixture
	charge func(context.Context, TTx, string, int) error
}

func (p *payments[TTx]) CreatePayment(ctx context.Context, req *connect.Request[testpb.CreatePaymentRequest]) (*connect.Response[testpb.Payment], error) {
	p.f.calls.Add(1)
	if ctx.Value(txKey{}) == nil {
		return nil, connect.NewError(connect.CodeInternal, errors.New("no transaction in the handler's context"))
	}
	ref := req.Msg.GetLabels()["ref"]
	if err := p.charge(ctx, TxFrom[TTx](ctx), ref, int(req.Msg.GetAmount())); err != nil {
		return nil, err
	}
	if h := p.f.hook.Load(); h != nil {
		(*h)()
	}
	pay := &testpb.Payment{Id: "pay_" + ref, Amount: req.Msg.GetAmount()}
	switch req.Msg.GetMethod() {
	case "card":
		pay.Instrument = &testpb.Payment_Card{Card: &testpb.Card{Last4: "4242"}}
	case "bank":
		pay.Instrument = &testpb.Payment_Bank{Bank: &testpb.BankTransfer{Iban: "DE89370400440532013000"}}
	case "decline":
		ce := connect.NewError(connect.CodeFailedPrecondition, errors.New("card declined"))
		d, _ := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "payments.test", Metadata: map[string]string{"decline_code": "insufficient_funds"}})
		ce.AddDetail(d)
		return nil, ce
	case "unavailable":
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the bank is down"))
	}
	return connect.NewResponse(pay), nil
}

func (p *payments[TTx]) GetPayment(ctx context.Context, req *connect.Request[testpb.GetPaymentRequest]) (*connect.Response[testpb.Payment], error) {
	p.f.sawTx.Store(ctx.Value(txKey{}) != nil)
	return connect.NewResponse(&testpb.Payment{Id: req.Msg.GetId()}), nil
}

func (p *payments[TTx]) WatchPayments(ctx context.Context, req *connect.Request[testpb.GetPaymentRequest], stream *connect.ServerStream[testpb.Payment]) error {
	return stream.Send(&testpb.Payment{Id: req.Msg.GetId()})
}

// keyed is a request with key in its Idempotency-Key header.
func keyed[T any](key string, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if key != "" {
		r.Header().Set(KeyHeader, key)
	}
	return r
}

func create(ref, method string, amount int64) *testpb.CreatePaymentRequest {
	return &testpb.CreatePaymentRequest{Amount: amount, Method: method, Labels: map[string]string{"ref": ref}}
}

// reasonOf is the ErrorInfo reason of err, "" if none.
func reasonOf(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return ""
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok {
				return info.GetReason()
			}
		}
	}
	return ""
}

func wantCode(t *testing.T, what string, err error, c connect.Code, reason string) {
	t.Helper()
	if connect.CodeOf(err) != c || (reason != "" && reasonOf(err) != reason) {
		t.Fatalf("%s: %v (reason %q); want %v %s", what, err, reasonOf(err), c, reason)
	}
}

// outer is a handler interceptor around the idempotency interceptor.
type outer struct {
	unary func(next connect.UnaryFunc) connect.UnaryFunc
}

func (o outer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return o.unary(next) }
func (o outer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (o outer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// arrivals closes a channel once n calls have passed it.
func arrivals(n int) (connect.Interceptor, <-chan struct{}) {
	var (
		mu   sync.Mutex
		seen int
		all  = make(chan struct{})
	)
	return outer{func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			mu.Lock()
			if seen++; seen == n {
				close(all)
			}
			mu.Unlock()
			return next(ctx, req)
		}
	}}, all
}
