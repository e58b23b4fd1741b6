// Package grpcadapter puts idempotency keys on gRPC: a unary server
// interceptor that runs a handler at most once per key, in the same
// transaction as its stored reply, and a client interceptor that keys each
// call once and keeps the key across retries.
//
// # Server
//
//	store, _ := idempotency.New(db) // or pgxstore.New(pool), with UnaryServerInterceptorFor
//	srv := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(grpcadapter.UnaryServerInterceptor(store,
//			grpcadapter.WithRequestKey(grpcadapter.RequestField("request_id")),
//			grpcadapter.WithScope(accountOf),
//		)),
//		grpc.ChainStreamInterceptor(grpcadapter.StreamServerInterceptor()),
//	)
//
// and write through the call's transaction:
//
//	func (s *server) CreatePayment(ctx context.Context, req *paymentsv1.CreatePaymentRequest) (*paymentsv1.Payment, error) {
//		tx := grpcadapter.Tx(ctx)
//		_, err := tx.ExecContext(ctx, `INSERT INTO payments ...`)
//		...
//	}
//
// The interceptor handles every unary method whose idempotency_level is
// not NO_SIDE_EFFECTS (DefaultMethods; WithMethods names others). It takes
// the key from the idempotency-key metadata, or from the request
// (WithRequestKey: AIP-155's request_id), fingerprints the method and the
// request's deterministic protobuf bytes, and runs the handler inside
// idempotency.Run with the transaction in its context. The reply is stored
// as a protobuf message (protocodec) and committed with the handler's
// writes before it is sent; a retry with the same key gets the same
// message, of the method's own type, with the header metadata
// idempotent-replayed: true, and the handler does not run. A handled call
// without a key runs in a transaction too, with nothing stored
// (WithKeyRequired refuses it).
//
// The handler may run more than once for one call, as fn can: after a
// serialization failure or a deadlock it returned, its writes are rolled
// back and it runs again with a fresh copy of the request.
//
// # Failures
//
// A handler error whose code a retry would meet again (DefaultStoredCode:
// NotFound, AlreadyExists, PermissionDenied, FailedPrecondition,
// OutOfRange, Unimplemented; WithStoredCodes) rolls the handler's writes
// back and is stored, status details included, and replayed to retries.
// idempotency.Final marks any error so. Other errors roll back, store
// nothing, and reach the client as the handler returned them. The
// library's own errors map to codes by one table: see StatusFor.
//
// # Client
//
//	conn, _ := grpc.NewClient(addr,
//		grpc.WithDefaultServiceConfig(grpcadapter.RetryServiceConfig),
//		grpc.WithChainUnaryInterceptor(grpcadapter.UnaryClientInterceptor()),
//		...)
//
// Every call of a keyed method gets a fresh key, made once for the call:
// grpc-go's retries under RetryServiceConfig, and the interceptor's own
// (ClientRetries), send the same key, so the server runs it once.
//
// # Streams
//
// Streaming calls are not supported: their messages cannot be stored as
// one reply. StreamServerInterceptor refuses a stream that carries a key
// with Unimplemented, rather than ignore the key.
package grpcadapter
