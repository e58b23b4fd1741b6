package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jmoiron/sqlx"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/grpc/paymentsv1"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/grpcadapter"
)

// schema is the business table. The payment and the key commit in one
// transaction, in the same database.
const schema = `CREATE TABLE IF NOT EXISTS payments (
	id       VARCHAR(40) PRIMARY KEY,
	customer VARCHAR(40) NOT NULL,
	amount   BIGINT      NOT NULL,
	currency VARCHAR(3)  NOT NULL,
	source   VARCHAR(40) NOT NULL
)`

// server implements the Payments service. Its handlers write through the
// call's transaction, grpcadapter.Tx(ctx), which the interceptor opened
// and commits with the stored reply.
type server struct {
	paymentsv1.UnimplementedPaymentsServer
	db   *sqlx.DB
	runs atomic.Int64 // how many times CreatePayment's handler ran
}

// newGRPCServer is the gRPC server of the service: the idempotency
// interceptor on the store, keys from the request_id field (AIP-155) or
// the idempotency-key metadata, and streams with a key refused. extra
// interceptors go in front of it.
func newGRPCServer(srv *server, store *idempotency.Store, extra ...grpc.UnaryServerInterceptor) *grpc.Server {
	chain := append(extra, grpcadapter.UnaryServerInterceptor(store,
		grpcadapter.WithRequestKey(grpcadapter.RequestField("request_id")),
	))
	g := grpc.NewServer(
		grpc.ChainUnaryInterceptor(chain...),
		grpc.ChainStreamInterceptor(grpcadapter.StreamServerInterceptor()),
	)
	paymentsv1.RegisterPaymentsServer(g, srv)
	return g
}

func (s *server) CreatePayment(ctx context.Context, req *paymentsv1.CreatePaymentRequest) (*paymentsv1.Payment, error) {
	s.runs.Add(1)
	if req.GetAmount() <= 0 || req.GetCustomer() == "" {
		return nil, status.Error(codes.InvalidArgument, "want a customer and a positive amount")
	}
	p := &paymentsv1.Payment{
		Id:       exampledb.NewID("pay_"),
		Customer: req.GetCustomer(),
		Amount:   req.GetAmount(),
		Currency: req.GetCurrency(),
	}
	source := ""
	switch src := req.GetSource().(type) {
	case *paymentsv1.CreatePaymentRequest_Card:
		n := src.Card.GetNumber()
		last4 := n[max(len(n)-4, 0):]
		p.Source = &paymentsv1.Payment_Card{Card: &paymentsv1.Card{Last4: last4}}
		source = "card " + last4
	case *paymentsv1.CreatePaymentRequest_Bank:
		p.Source = &paymentsv1.Payment_Bank{Bank: &paymentsv1.BankTransfer{Iban: src.Bank.GetIban()}}
		source = "bank"
	default:
		return nil, status.Error(codes.InvalidArgument, "want a card or a bank transfer")
	}
	tx := grpcadapter.Tx(ctx)
	if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO payments (id, customer, amount, currency, source) VALUES (?, ?, ?, ?, ?)`),
		p.Id, p.Customer, p.Amount, p.Currency, source); err != nil {
		// A serialization failure or a deadlock returned as it is makes
		// the store run the handler again; other errors roll back.
		return nil, err
	}
	if strings.HasSuffix(req.GetCard().GetNumber(), "0002") {
		// A declined card: FailedPrecondition is stored (the insert above
		// is rolled back) and every retry gets it back, details and all.
		st, err := status.New(codes.FailedPrecondition, "card declined").WithDetails(
			&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "payments.example.com", Metadata: map[string]string{"decline_code": "insufficient_funds"}})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	return p, nil
}

func (s *server) GetPayment(ctx context.Context, req *paymentsv1.GetPaymentRequest) (*paymentsv1.Payment, error) {
	var row struct {
		ID       string `db:"id"`
		Customer string `db:"customer"`
		Amount   int64  `db:"amount"`
		Currency string `db:"currency"`
	}
	err := s.db.GetContext(ctx, &row, s.db.Rebind(`SELECT id, customer, amount, currency FROM payments WHERE id = ?`), req.GetId())
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, status.Errorf(codes.NotFound, "no payment %s", req.GetId())
		}
		return nil, fmt.Errorf("read payment: %w", err)
	}
	return &paymentsv1.Payment{Id: row.ID, Customer: row.Customer, Amount: row.Amount, Currency: row.Currency}, nil
}
