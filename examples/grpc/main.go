// Command grpc is a payments service on gRPC whose CreatePayment runs once
// per key, however often it is retried: grpcadapter's interceptors on the
// server and the client, the generated code in paymentsv1 (protoc output,
// checked in). By default it serves on a free port of 127.0.0.1, calls
// itself through a real connection, and prints what each call did; with
// -listen it only serves.
//
//	go run ./examples/grpc
//	go run ./examples/grpc -listen 127.0.0.1:50051   # then call it with any gRPC client
//	go run ./examples/grpc -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync/atomic"

	"github.com/jmoiron/sqlx"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/grpc/paymentsv1"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/grpcadapter"
	"github.com/exactlyonce/idempotency/migrations"
)

var listen = flag.String("listen", "", "only serve, on this address")

func main() { exampledb.Main("grpc", run) }

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("create payments: %w", err)
	}
	store, err := idempotency.New(db)
	if err != nil {
		return err
	}
	srv := &server{db: db}
	if *listen != "" {
		lis, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		log.Printf("grpc: payments on %s", lis.Addr())
		g := newGRPCServer(srv, store)
		go func() { <-ctx.Done(); g.GracefulStop() }()
		return g.Serve(lis)
	}
	return demo(ctx, w, srv, store)
}

// demo serves on a free port, with a front interceptor that loses one
// reply after its commit, and calls the service as a client would.
func demo(ctx context.Context, w io.Writer, srv *server, store *idempotency.Store) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var loseNext atomic.Bool
	g := newGRPCServer(srv, store, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		reply, err := handler(ctx, req)
		if loseNext.CompareAndSwap(true, false) {
			return nil, status.Error(codes.Unavailable, "connection reset after the commit")
		}
		return reply, err
	})
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	// The client: a key for every call of a method with side effects, kept
	// across grpc-go's retries of UNAVAILABLE.
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(grpcadapter.RetryServiceConfig),
		grpc.WithChainUnaryInterceptor(grpcadapter.UnaryClientInterceptor(
			grpcadapter.ClientRequestKey(grpcadapter.RequestField("request_id")))),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := paymentsv1.NewPaymentsClient(conn)

	customer := exampledb.NewID("cus_")
	card := func(id string, amount int64, number string) *paymentsv1.CreatePaymentRequest {
		return &paymentsv1.CreatePaymentRequest{RequestId: id, Customer: customer, Amount: amount, Currency: "EUR",
			Source: &paymentsv1.CreatePaymentRequest_Card{Card: &paymentsv1.Card{Number: number}}}
	}
	order1, order2, order3 := exampledb.NewID("order-"), exampledb.NewID("order-"), exampledb.NewID("order-")
	call := func(req *paymentsv1.CreatePaymentRequest) (*paymentsv1.Payment, bool, int64, error) {
		before := srv.runs.Load()
		var header metadata.MD
		p, err := client.CreatePayment(ctx, req, grpc.Header(&header))
		return p, len(header.Get(grpcadapter.ReplayedMetadata)) > 0, srv.runs.Load() - before, err
	}

	p1, replayed, runs, err := call(card(order1, 2500, "4242424242424242"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "1. request_id order-1, 25.00 EUR by card: %s, card ending %s; handler ran %d time (replayed=%v)\n", p1.GetId(), p1.GetCard().GetLast4(), runs, replayed)

	p, replayed, runs, err := call(card(order1, 2500, "4242424242424242"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "2. retry order-1: %s again, card ending %s; handler ran %d times (replayed=%v)\n", p.GetId(), p.GetCard().GetLast4(), runs, replayed)

	_, _, runs, err = call(card(order1, 9900, "4242424242424242"))
	fmt.Fprintf(w, "3. order-1 with another amount: %s %s; handler ran %d times\n", status.Code(err), reason(err), runs)

	_, _, runs, err = call(card(order2, 1200, "4000000000000002"))
	_, replayed, runs2, err2 := call(card(order2, 1200, "4000000000000002"))
	fmt.Fprintf(w, "4. order-2, a declined card: %s %q %s; its retry: %s %q %s (replayed=%v); handler ran %d time\n",
		status.Code(err), status.Convert(err).Message(), reason(err), status.Code(err2), status.Convert(err2).Message(), reason(err2), replayed, runs+runs2)

	loseNext.Store(true) // the reply of the next call is lost after its commit
	p3, replayed, runs, err := call(&paymentsv1.CreatePaymentRequest{RequestId: order3, Customer: customer, Amount: 4000, Currency: "EUR",
		Source: &paymentsv1.CreatePaymentRequest_Bank{Bank: &paymentsv1.BankTransfer{Iban: "DE89370400440532013000"}}})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "5. order-3 by bank transfer, its first reply lost after the commit: grpc-go retried with the same key, got %s (replayed=%v); handler ran %d time\n", p3.GetId(), replayed, runs)

	p4, _, runs, err := call(card("", 700, "5555555555554444"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "6. no request_id: the client interceptor sent an idempotency-key of its own: %s; handler ran %d time\n", p4.GetId(), runs)

	got, err := client.GetPayment(ctx, &paymentsv1.GetPaymentRequest{Id: p1.GetId()})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "7. GetPayment %s (NO_SIDE_EFFECTS, no key): %d %s\n", got.GetId(), got.GetAmount(), got.GetCurrency())

	var n int
	if err := srv.db.GetContext(ctx, &n, srv.db.Rebind(`SELECT COUNT(*) FROM payments WHERE customer = ?`), customer); err != nil {
		return err
	}
	fmt.Fprintf(w, "Payments in the database: %d (orders 1, 3 and the keyless one; the declined card's insert rolled back)\n", n)
	return nil
}

// reason is the ErrorInfo reason of err's status, in brackets.
func reason(err error) string {
	var rs []string
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			rs = append(rs, info.GetReason())
		}
	}
	return "[" + strings.Join(rs, ",") + "]"
}
