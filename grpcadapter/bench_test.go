package grpcadapter

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// BenchmarkInterceptor compares, on the pgx store, a unary RPC whose
// handler writes one row in a transaction of its own (bare) with the same
// RPC behind UnaryServerInterceptorFor: fresh calls (a new key each) and
// replays (one key), at 1 and 16 callers over a real connection. It
// reports throughput as a fraction of the bare RPC's and the replay's p50
// latency as a fraction of the bare RPC's, and logs the table:
//
//	go test -run '^$' -bench BenchmarkInterceptor -benchtime 1x ./grpcadapter
//
// GRPC_BENCH_OPS sets the calls per measurement (default 2000).
func BenchmarkInterceptor(b *testing.B) {
	ops := 2000
	if v, err := strconv.Atoi(os.Getenv("GRPC_BENCH_OPS")); err == nil && v > 0 {
		ops = v
	}
	backend := testdb.Backend{Name: "pgx-native", Driver: "pgx", Kind: "postgres"}
	pool, err := pgxpool.New(context.Background(), backend.DSN(b))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	ctx := context.Background()
	if err := pgxstore.Up(ctx, pool); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, testdb.Charges); err != nil {
		b.Fatal(err)
	}
	store, err := pgxstore.New(pool)
	if err != nil {
		b.Fatal(err)
	}
	bare := benchClient(b, &benchServer{pool: pool})
	keyed := benchClient(b, &benchServer{pool: pool}, grpc.UnaryInterceptor(UnaryServerInterceptorFor(store)))
	req := &testpb.CreatePaymentRequest{Amount: 1, Method: "card", Labels: map[string]string{"ref": "bench"}}
	var seq atomic.Int64
	if _, err := keyed.CreatePayment(withKey("replayed"), req); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var table string
		for _, callers := range []int{1, 16} {
			rBare, pBare := measure(b, callers, ops, func() error { _, err := bare.CreatePayment(ctx, req); return err })
			rFresh, _ := measure(b, callers, ops, func() error {
				_, err := keyed.CreatePayment(withKey("k"+strconv.FormatInt(seq.Add(1), 10)), req)
				return err
			})
			rReplay, pReplay := measure(b, callers, ops, func() error { _, err := keyed.CreatePayment(withKey("replayed"), req); return err })
			b.ReportMetric(rFresh/rBare, fmt.Sprintf("fresh/bare@%d", callers))
			b.ReportMetric(float64(pReplay)/float64(pBare), fmt.Sprintf("replay-p50/bare-p50@%d", callers))
			table += fmt.Sprintf("\n%7d | %8.0f/s %8v | %8.0f/s (%.2f) | %8.0f/s (%.2f) %8v (p50 %.2f)",
				callers, rBare, pBare, rFresh, rFresh/rBare, rReplay, rReplay/rBare, pReplay, float64(pReplay)/float64(pBare))
		}
		b.Logf("\ncallers | bare: rate, p50      | fresh: rate (of bare) | replay: rate (of bare), p50 (of bare's)%s", table)
	}
}

// measure runs ops calls of call on callers goroutines, and returns the
// calls per second and the median latency.
func measure(b *testing.B, callers, ops int, call func() error) (float64, time.Duration) {
	lat := make([]time.Duration, ops)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < ops; i = int(next.Add(1)) - 1 {
				t := time.Now()
				if err := call(); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	return float64(ops) / elapsed.Seconds(), lat[ops/2]
}

// benchServer's CreatePayment writes one row: in the call's transaction
// behind the interceptor, in one of its own otherwise (the bare RPC).
type benchServer struct {
	testpb.UnimplementedPaymentsServer
	pool *pgxpool.Pool
}

func (s *benchServer) CreatePayment(ctx context.Context, req *testpb.CreatePaymentRequest) (*testpb.Payment, error) {
	const insert = `INSERT INTO charges (ref, amount) VALUES ($1, $2)`
	if tx := TxFrom[pgx.Tx](ctx); tx != nil {
		if _, err := tx.Exec(ctx, insert, "bench", req.GetAmount()); err != nil {
			return nil, err
		}
	} else {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, insert, "bench", req.GetAmount()); err != nil {
			return nil, err
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, err
		}
	}
	return &testpb.Payment{Id: "pay_bench", Amount: req.GetAmount(), Instrument: &testpb.Payment_Card{Card: &testpb.Card{Last4: "4242"}}}, nil
}

func benchClient(b *testing.B, srv testpb.PaymentsServer, opts ...grpc.ServerOption) testpb.PaymentsClient {
	g := grpc.NewServer(opts...)
	testpb.RegisterPaymentsServer(g, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	b.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return testpb.NewPaymentsClient(conn)
}
