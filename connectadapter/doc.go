// Package connectadapter puts idempotency keys on Connect
// (connectrpc.com/connect), for its three protocols (Connect, gRPC and
// gRPC-Web): a handler interceptor that runs a unary handler at most once
// per key, in the same transaction as its stored reply, and a client
// interceptor that keys each call once and retries it with that key.
//
// # Server
//
//	store, _ := idempotency.New(db) // or pgxstore.New(pool), with NewInterceptorFor
//	path, handler := paymentsv1connect.NewPaymentsHandler(&server{},
//		connect.WithInterceptors(connectadapter.NewInterceptor(store,
//			connectadapter.WithRequestKey(connectadapter.RequestField("request_id")),
//		)))
//
// and write through the call's transaction, connectadapter.Tx(ctx).
//
// The interceptor handles every unary procedure whose IdempotencyLevel is
// not NoSideEffects (DefaultProcedures; WithProcedures names others). It
// takes the key from the Idempotency-Key header (the idempotency-key
// metadata in gRPC), or from the request (WithRequestKey: AIP-155's
// request_id), fingerprints the procedure and the request's deterministic
// protobuf bytes, and runs the handler inside idempotency.Run with the
// transaction in its context. The reply is stored as a protobuf message
// and committed with the handler's writes; a retry with the same key gets
// the same message with the header Idempotent-Replayed: true, and the
// handler does not run. Headers and trailers the handler set are not
// stored: a replay carries the message alone. A handled call without a
// key runs in a transaction too, with nothing stored (WithKeyRequired
// refuses it). The handler may run more than once for one call, after a
// serialization failure or a deadlock it returned; it gets a fresh copy of
// the request each time.
//
// A handler error whose code a retry would meet again (DefaultStoredCode;
// WithStoredCodes), or that wraps an idempotency.FinalError, rolls back
// the handler's writes and is stored with its details, and replayed. The
// library's own errors map to codes by the one table of both adapters,
// protocodec.Status, as ErrorFor answers them.
//
// # Client
//
//	client := paymentsv1connect.NewPaymentsClient(http.DefaultClient, url,
//		connect.WithInterceptors(connectadapter.NewClientInterceptor()))
//
// # Streams
//
// Streaming calls are not supported: a stream that carries a key is
// refused with Unimplemented rather than have its key ignored.
package connectadapter
