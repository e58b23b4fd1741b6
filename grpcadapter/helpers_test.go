package grpcadapter

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// db is one store under test, with the charges table (testdb.Charges)
// that the test service writes to, so that tests count effects from the
// database.
type db struct {
	name string
	kind string
	// serve starts the test service behind the interceptor on this store.
	serve func(t *testing.T, sopts []idempotency.Option, opts []Option, outer grpc.UnaryServerInterceptor, dial ...grpc.DialOption) *fixture
}

// dbs are the stores the adapter runs on: the sqlx store on SQLite,
// Postgres (lib/pq and pgx stdlib) and MySQL or MariaDB, and the pgx
// store.
func dbs() []db {
	var out []db
	for _, b := range testdb.Backends() {
		if b.Server == "tidb" {
			continue
		}
		out = append(out, db{name: b.Name, kind: b.Kind, serve: func(t *testing.T, sopts []idempotency.Option, opts []Option, outer grpc.UnaryServerInterceptor, dial ...grpc.DialOption) *fixture {
			e := conformance.OpenSQL(t, b)
			return start(t, e.NewStore(t, sopts...), e.Charge, func(q string) int { return e.Count(t, q) }, opts, outer, dial)
		}})
	}
	out = append(out, db{name: "pgx-native", kind: "postgres", serve: servePgx})
	return out
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

func servePgx(t *testing.T, sopts []idempotency.Option, opts []Option, outer grpc.UnaryServerInterceptor, dial ...grpc.DialOption) *fixture {
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
	return start(t, s, charge, count, opts, outer, dial)
}

// fixture is a running test service and a client connected to it.
type fixture struct {
	client testpb.PaymentsClient
	calls  atomic.Int64 // runs of CreatePayment's handler
	count  func(query string) int
	// hook, if set, runs in CreatePayment's handler after its write.
	hook atomic.Pointer[func(ctx context.Context, req *testpb.CreatePaymentRequest)]
	// sawTx records whether GetPayment's handler had a transaction.
	sawTx atomic.Bool
}

func (f *fixture) charges(ref string) int {
	return f.count(`SELECT COUNT(*) FROM charges WHERE ref = '` + ref + `'`)
}

func (f *fixture) keys() int { return f.count(`SELECT COUNT(*) FROM idempotency_keys`) }

// start serves the test service on 127.0.0.1 behind outer (if any), the
// interceptor on s, and StreamServerInterceptor, and connects a client.
func start[TTx any](t *testing.T, s *idempotency.TxStore[TTx], charge func(context.Context, TTx, string, int) error, count func(string) int, opts []Option, outer grpc.UnaryServerInterceptor, dial []grpc.DialOption) *fixture {
	t.Helper()
	f := &fixture{count: count}
	chain := []grpc.UnaryServerInterceptor{UnaryServerInterceptorFor(s, opts...)}
	if outer != nil {
		chain = append([]grpc.UnaryServerInterceptor{outer}, chain...)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...), grpc.ChainStreamInterceptor(StreamServerInterceptor()))
	testpb.RegisterPaymentsServer(srv, &payments[TTx]{f: f, charge: charge})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	dial = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dial...)
	conn, err := grpc.NewClient(lis.Addr().String(), dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	f.client = testpb.NewPaymentsClient(conn)
	return f
}

// payments is the test service: CreatePayment charges through the call's
// transaction and answers by req.Method: "card" and "bank" (the two sides
// of the oneof), "decline" (FailedPrecondition with details, stored),
// "unavailable" (not stored).
type payments[TTx any] struct {
	testpb.UnimplementedPaymentsServer
	f      *fixture
	charge func(context.Context, TTx, string, int) error
}

func (p *payments[TTx]) CreatePayment(ctx context.Context, req *testpb.CreatePaymentRequest) (*testpb.Payment, error) {
	p.f.calls.Add(1)
	v := ctx.Value(txKey{})
	if v == nil {
		return nil, status.Error(codes.Internal, "no transaction in the handler's context")
	}
	ref := req.GetLabels()["ref"]
	if err := p.charge(ctx, TxFrom[TTx](ctx), ref, int(req.GetAmount())); err != nil {
		return nil, err
	}
	if h := p.f.hook.Load(); h != nil {
		(*h)(ctx, req)
	}
	pay := &testpb.Payment{Id: "pay_" + ref, Amount: req.GetAmount()}
	switch req.GetMethod() {
	case "card":
		pay.Instrument = &testpb.Payment_Card{Card: &testpb.Card{Last4: "4242"}}
	case "bank":
		pay.Instrument = &testpb.Payment_Bank{Bank: &testpb.BankTransfer{Iban: "DE89370400440532013000"}}
	case "decline":
		st, _ := status.New(codes.FailedPrecondition, "card declined").WithDetails(
			&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "payments.test", Metadata: map[string]string{"decline_code": "insufficient_funds"}},
			&errdetails.LocalizedMessage{Locale: "en-US", Message: "Your card was declined."})
		return nil, st.Err()
	case "unavailable":
		return nil, status.Error(codes.Unavailable, "the bank is down")
	}
	return pay, nil
}

func (p *payments[TTx]) GetPayment(ctx context.Context, req *testpb.GetPaymentRequest) (*testpb.Payment, error) {
	p.f.sawTx.Store(ctx.Value(txKey{}) != nil)
	return &testpb.Payment{Id: req.GetId()}, nil
}

func (p *payments[TTx]) WatchPayments(req *testpb.GetPaymentRequest, stream grpc.ServerStreamingServer[testpb.Payment]) error {
	return stream.Send(&testpb.Payment{Id: req.GetId()})
}

// withKey is ctx with key in its outgoing metadata.
func withKey(key string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), KeyMetadata, key)
}

func create(ref, method string, amount int64) *testpb.CreatePaymentRequest {
	return &testpb.CreatePaymentRequest{Amount: amount, Method: method, Labels: map[string]string{"ref": ref}}
}

// reasonOf is the ErrorInfo reason of err's status, "" if none.
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// wantCode fails t unless err has code c and reason (when not "").
func wantCode(t *testing.T, what string, err error, c codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != c || (reason != "" && reasonOf(err) != reason) {
		t.Fatalf("%s: %v (reason %q); want %v %s", what, err, reasonOf(err), c, reason)
	}
}

// arrivals closes a channel once n calls have passed an outer interceptor.
func arrivals(n int) (grpc.UnaryServerInterceptor, <-chan struct{}) {
	var (
		mu   sync.Mutex
		seen int
		all  = make(chan struct{})
	)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		mu.Lock()
		if seen++; seen == n {
			close(all)
		}
		mu.Unlock()
		return handler(ctx, req)
	}, all
}
