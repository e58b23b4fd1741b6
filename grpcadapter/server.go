package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jmoiron/sqlx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/protocodec"
	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

// KeyMetadata is the metadata key of an idempotency key (gRPC metadata
// keys are lower case).
const KeyMetadata = "idempotency-key"

// ReplayedMetadata is the response header metadata that marks a replayed
// reply or stored failure: "true".
const ReplayedMetadata = "idempotent-replayed"

type txKey struct{}

// Tx returns the transaction of the call whose context is ctx, behind
// UnaryServerInterceptor: the handler writes through it, and its writes
// commit with the stored reply. It is nil outside a handled method.
func Tx(ctx context.Context) *sqlx.Tx { return TxFrom[*sqlx.Tx](ctx) }

// TxFrom is Tx for a store of any transaction type: behind
// UnaryServerInterceptorFor on the pgx store, TxFrom[pgx.Tx](ctx) is the
// call's pgx.Tx. It is the zero value where there is none.
func TxFrom[TTx any](ctx context.Context) TTx {
	tx, _ := ctx.Value(txKey{}).(TTx)
	return tx
}

// UnaryServerInterceptor returns an interceptor that runs each handled
// unary call (DefaultMethods, or WithMethods) at most once per idempotency
// key, in a transaction of store's that also stores its reply: see the
// package documentation. It panics if store is nil or an option is
// invalid.
func UnaryServerInterceptor(store *idempotency.Store, opts ...Option) grpc.UnaryServerInterceptor {
	if store == nil {
		panic("grpcadapter: UnaryServerInterceptor(nil): want a store from idempotency.New")
	}
	return UnaryServerInterceptorFor(store, opts...)
}

// UnaryServerInterceptorFor is UnaryServerInterceptor for a store of any
// transaction type, such as the pgx store: handlers get the call's
// transaction with TxFrom.
func UnaryServerInterceptorFor[TTx any](store *idempotency.TxStore[TTx], opts ...Option) grpc.UnaryServerInterceptor {
	if store == nil {
		panic("grpcadapter: UnaryServerInterceptorFor(nil): want a store")
	}
	i := &interceptor[TTx]{store: store.WithCodec(protocodec.Codec), cfg: newConfig(opts)}
	return i.intercept
}

type interceptor[TTx any] struct {
	store *idempotency.TxStore[TTx]
	cfg   *config
}

// handlerError is an error of the handler's own, which reaches the client
// unchanged. It unwraps, so that the store retries a serialization
// failure or a deadlock the handler returned.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

func (i *interceptor[TTx]) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	msg, isProto := req.(proto.Message)
	// A call already in a transaction (the interceptor chained twice)
	// keeps it.
	if !isProto || !i.cfg.methods(info.FullMethod) || ctx.Value(txKey{}) != nil {
		return handler(ctx, req)
	}
	key, err := callKey(ctx, msg, i.cfg.requestKey)
	switch {
	case errors.Is(err, protocodec.ErrNoKey) && !i.cfg.requireKey:
		return i.withoutKey(ctx, req, info, handler)
	case err != nil:
		return nil, i.fail(ctx, info, err)
	}
	s := i.store
	if i.cfg.scope != nil {
		scope := i.cfg.scope(ctx)
		if scope == "" {
			return nil, i.fail(ctx, info, fmt.Errorf("%w: WithScope's function returned \"\"", idempotency.ErrInvalidScope))
		}
		s = s.Scope(scope)
	}
	params, err := protocodec.Params(info.FullMethod, msg)
	if err != nil {
		return nil, i.fail(ctx, info, fmt.Errorf("%w: %w", idempotency.ErrBadParams, err))
	}
	res, err := idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx TTx) (proto.Message, error) {
		// A copy per attempt: the store runs the handler again after a
		// serialization failure, and the handler may have changed it.
		reply, err := handler(context.WithValue(ctx, txKey{}, tx), proto.Clone(msg))
		if err != nil {
			return nil, i.handlerFailed(err)
		}
		m, ok := reply.(proto.Message)
		if !ok || m == nil || !m.ProtoReflect().IsValid() {
			return nil, fmt.Errorf("%w: %T is not a message", protocodec.ErrReplyNotStorable, reply)
		}
		return m, nil
	})
	if res.Replayed {
		_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedMetadata, "true"))
	}
	if err != nil {
		return nil, i.fail(ctx, info, err)
	}
	return res.Value, nil
}

// handlerFailed turns an error of the handler into what the store sees: a
// final failure when its code is stored (the handler's status with its
// details, as the payload), else the error itself, which rolls back.
func (i *interceptor[TTx]) handlerFailed(err error) error {
	var final *idempotency.FinalError
	isFinal := errors.As(err, &final)
	st, isStatus := status.FromError(err)
	if !isFinal && !(isStatus && i.cfg.stored(st.Code())) {
		return &handlerError{err}
	}
	if isFinal {
		st = finalStatus(final)
	}
	code := "grpc:" + st.Code().String()
	if isFinal && final.Code != "" {
		code = final.Code
	}
	f, err := protocodec.StoreStatus(st.Proto(), code, st.Err())
	if err != nil {
		return fmt.Errorf("%w: its status: %w", protocodec.ErrReplyNotStorable, err)
	}
	return f
}

// fail is the error the client gets for err.
func (i *interceptor[TTx]) fail(ctx context.Context, info *grpc.UnaryServerInfo, err error) error {
	var he *handlerError
	if errors.As(err, &he) {
		return he.err
	}
	st := statusFor(err, i.cfg.retryAfter)
	switch st.Code() {
	case codes.Internal:
		i.cfg.logger.ErrorContext(ctx, "grpcadapter: the call failed", "method", info.FullMethod, "err", err)
	case codes.Unavailable:
		if errors.Is(err, idempotency.ErrInProgress) {
			// grpc-go's retry policy waits this long before the next try.
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.FormatInt(i.cfg.retryAfter.Milliseconds(), 10)))
		} else {
			i.cfg.logger.WarnContext(ctx, "grpcadapter: the call failed; a retry with the same key is safe", "method", info.FullMethod, "err", err)
		}
	}
	return st.Err()
}

// withoutKey runs a handled call that has no key in a transaction of its
// own, stores nothing, and returns the handler's answer.
func (i *interceptor[TTx]) withoutKey(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var reply any
	err := idempotency.InTx(ctx, i.store, func(ctx context.Context, tx TTx) error {
		var err error
		if reply, err = handler(context.WithValue(ctx, txKey{}, tx), req); err != nil {
			return &handlerError{err}
		}
		return nil
	})
	switch {
	case err == nil:
		return reply, nil
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		// Without a key a retry is not safe: say so, and not Unavailable.
		i.cfg.logger.ErrorContext(ctx, "grpcadapter: commit failed", "method", info.FullMethod, "err", err)
		return nil, status.Error(codes.Unknown, "the call's transaction failed to commit; it may or may not have taken effect; send an idempotency-key to make retries safe")
	}
	return nil, i.fail(ctx, info, err)
}

// callKey is the call's key, from its metadata or its request;
// protocodec.ErrNoKey when it has none.
func callKey(ctx context.Context, req proto.Message, fromRequest func(proto.Message) string) (string, error) {
	return rpckey.CallKey(metadata.ValueFromIncomingContext(ctx, KeyMetadata), req, fromRequest, "idempotency-key metadata", "idempotency-key values")
}

// StreamServerInterceptor refuses a streaming call that carries an
// idempotency key, with Unimplemented: a stream's messages cannot be
// stored and replayed as one reply, and a key that is silently ignored
// would promise what is not kept. Streams without a key pass through.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if len(metadata.ValueFromIncomingContext(ss.Context(), KeyMetadata)) > 0 {
			return status.Errorf(codes.Unimplemented, "idempotency keys are not supported on streaming calls (%s): send it without an idempotency-key, or make it unary", info.FullMethod)
		}
		return handler(srv, ss)
	}
}
