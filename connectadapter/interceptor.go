package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/jmoiron/sqlx"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/protocodec"
	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

// KeyHeader is the request header of an idempotency key; in the gRPC and
// gRPC-Web protocols it is the idempotency-key metadata.
const KeyHeader = "Idempotency-Key"

// ReplayedHeader is the response header that marks a replayed reply or
// stored failure: "true".
const ReplayedHeader = "Idempotent-Replayed"

type txKey struct{}

// Tx returns the transaction of the call whose context is ctx, behind the
// interceptor: the handler writes through it, and its writes commit with
// the stored reply. It is nil outside a handled procedure.
func Tx(ctx context.Context) *sqlx.Tx { return TxFrom[*sqlx.Tx](ctx) }

// TxFrom is Tx for a store of any transaction type: behind
// NewInterceptorFor on the pgx store, TxFrom[pgx.Tx](ctx) is the call's
// pgx.Tx. It is the zero value where there is none.
func TxFrom[TTx any](ctx context.Context) TTx {
	tx, _ := ctx.Value(txKey{}).(TTx)
	return tx
}

// NewInterceptor returns a handler interceptor (connect.WithInterceptors)
// that runs each handled unary call at most once per idempotency key, in a
// transaction of store's that also stores its reply: see the package
// documentation. It panics if store is nil or an option is invalid.
func NewInterceptor(store *idempotency.Store, opts ...Option) connect.Interceptor {
	if store == nil {
		panic("connectadapter: NewInterceptor(nil): want a store from idempotency.New")
	}
	return NewInterceptorFor(store, opts...)
}

// NewInterceptorFor is NewInterceptor for a store of any transaction type,
// such as the pgx store: handlers get the call's transaction with TxFrom.
func NewInterceptorFor[TTx any](store *idempotency.TxStore[TTx], opts ...Option) connect.Interceptor {
	if store == nil {
		panic("connectadapter: NewInterceptorFor(nil): want a store")
	}
	return &interceptor[TTx]{store: store.WithCodec(protocodec.Codec), cfg: newConfig(opts)}
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

func (i *interceptor[TTx]) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		msg, isProto := req.Any().(proto.Message)
		if req.Spec().IsClient || !isProto || !i.cfg.procedures(req.Spec()) || ctx.Value(txKey{}) != nil {
			return next(ctx, req)
		}
		key, err := callKey(req, msg, i.cfg.requestKey)
		switch {
		case errors.Is(err, protocodec.ErrNoKey) && !i.cfg.requireKey:
			return i.withoutKey(ctx, req, next)
		case err != nil:
			return nil, i.fail(ctx, req, err)
		}
		s := i.store
		if i.cfg.scope != nil {
			scope := i.cfg.scope(ctx, req)
			if scope == "" {
				return nil, i.fail(ctx, req, fmt.Errorf("%w: WithScope's function returned \"\"", idempotency.ErrInvalidScope))
			}
			s = s.Scope(scope)
		}
		procedure := req.Spec().Procedure
		params, err := protocodec.Params(procedure, msg)
		if err != nil {
			return nil, i.fail(ctx, req, fmt.Errorf("%w: %w", idempotency.ErrBadParams, err))
		}
		// A copy per attempt: the store runs the handler again after a
		// serialization failure, and the handler may have changed it.
		original := proto.Clone(msg)
		var fresh connect.AnyResponse
		res, err := idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx TTx) (proto.Message, error) {
			setMsg(req, proto.Clone(original))
			resp, err := next(context.WithValue(ctx, txKey{}, tx), req)
			if err != nil {
				return nil, i.handlerFailed(err)
			}
			m, ok := resp.Any().(proto.Message)
			if !ok || m == nil || !m.ProtoReflect().IsValid() {
				return nil, fmt.Errorf("%w: %T is not a message", protocodec.ErrReplyNotStorable, resp.Any())
			}
			fresh = resp
			return m, nil
		})
		if err != nil {
			ce := i.fail(ctx, req, err)
			if res.Replayed {
				ce.Meta().Set(ReplayedHeader, "true")
			}
			return nil, ce
		}
		if !res.Replayed {
			return fresh, nil
		}
		return replayed(res.Value)
	}
}

// setMsg gives a *connect.Request[T] the message m, a *T.
func setMsg(req connect.AnyRequest, m proto.Message) {
	v := reflect.ValueOf(req)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return
	}
	f := v.Elem().FieldByName("Msg")
	if f.IsValid() && f.CanSet() && reflect.TypeOf(m).AssignableTo(f.Type()) {
		f.Set(reflect.ValueOf(m))
	}
}

// replayed is the response of a replay. The interceptor cannot name the
// handler's *connect.Response[T] (the procedure's T is not known to it), so
// the message travels as a dynamicpb.Message of the same descriptor: its
// wire bytes, binary or JSON, are the generated type's, and the client
// decodes it into its own type. Interceptors outside this one see the
// dynamic message on replays.
func replayed(m proto.Message) (connect.AnyResponse, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("connectadapter: the stored reply: %w", err))
	}
	dm := dynamicpb.NewMessage(m.ProtoReflect().Descriptor())
	if err := proto.Unmarshal(b, dm); err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("connectadapter: the stored reply: %w", err))
	}
	resp := connect.NewResponse(dm)
	resp.Header().Set(ReplayedHeader, "true")
	return resp, nil
}

// handlerFailed turns an error of the handler into what the store sees: a
// final failure when its code is stored (its code, message and details,
// as a google.rpc.Status payload), else the error itself, which rolls back.
func (i *interceptor[TTx]) handlerFailed(err error) error {
	var final *idempotency.FinalError
	isFinal := errors.As(err, &final)
	var ce *connect.Error
	isConnect := errors.As(err, &ce)
	if !isFinal && !(isConnect && i.cfg.stored(ce.Code())) {
		return &handlerError{err}
	}
	var st *spb.Status
	switch {
	case isFinal && len(final.Payload) > 0, isFinal && !isConnect:
		st = protocodec.FinalStatus(final)
	default:
		st = statusOf(ce)
	}
	code := "connect:" + connect.Code(st.GetCode()).String()
	if isFinal && final.Code != "" {
		code = final.Code
	}
	f, serr := protocodec.StoreStatus(st, code, err)
	if serr != nil {
		return fmt.Errorf("%w: its status: %w", protocodec.ErrReplyNotStorable, serr)
	}
	return f
}

// statusOf is a connect error as a google.rpc.Status.
func statusOf(ce *connect.Error) *spb.Status {
	st := &spb.Status{Code: int32(ce.Code()), Message: ce.Message()}
	for _, d := range ce.Details() {
		st.Details = append(st.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type(), Value: d.Bytes()})
	}
	return st
}

// ErrorFor is the connect error the interceptor answers an error of the
// library's with, by the table of protocodec.Status (the same codes as
// grpcadapter.StatusFor). The handler's own errors are not in it: they
// reach the client as the handler returned them, stored or not.
func ErrorFor(err error) *connect.Error {
	return errorFrom(protocodec.Status(err, time.Second))
}

// errorFrom is st as a connect error, details and all.
func errorFrom(st *spb.Status) *connect.Error {
	ce := connect.NewError(connect.Code(st.GetCode()), errors.New(st.GetMessage()))
	for _, a := range st.GetDetails() {
		if d, err := connect.NewErrorDetail(a); err == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

// fail is the error the client gets for err.
func (i *interceptor[TTx]) fail(ctx context.Context, req connect.AnyRequest, err error) *connect.Error {
	var he *handlerError
	if errors.As(err, &he) {
		var ce *connect.Error
		if errors.As(he.err, &ce) {
			return ce
		}
		return connect.NewError(connect.CodeUnknown, he.err)
	}
	var final *idempotency.FinalError
	if errors.As(err, &final) {
		return errorFrom(protocodec.FinalStatus(final))
	}
	ce := errorFrom(protocodec.Status(err, i.cfg.retryAfter))
	switch ce.Code() {
	case connect.CodeInternal:
		i.cfg.logger.ErrorContext(ctx, "connectadapter: the call failed", "procedure", req.Spec().Procedure, "err", err)
	case connect.CodeUnavailable:
		if errors.Is(err, idempotency.ErrInProgress) {
			secs := (i.cfg.retryAfter.Milliseconds() + 999) / 1000
			ce.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
		} else {
			i.cfg.logger.WarnContext(ctx, "connectadapter: the call failed; a retry with the same key is safe", "procedure", req.Spec().Procedure, "err", err)
		}
	}
	return ce
}

// withoutKey runs a handled call that has no key in a transaction of its
// own, and stores nothing.
func (i *interceptor[TTx]) withoutKey(ctx context.Context, req connect.AnyRequest, next connect.UnaryFunc) (connect.AnyResponse, error) {
	var resp connect.AnyResponse
	err := idempotency.InTx(ctx, i.store, func(ctx context.Context, tx TTx) error {
		var err error
		if resp, err = next(context.WithValue(ctx, txKey{}, tx), req); err != nil {
			return &handlerError{err}
		}
		return nil
	})
	switch {
	case err == nil:
		return resp, nil
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		i.cfg.logger.ErrorContext(ctx, "connectadapter: commit failed", "procedure", req.Spec().Procedure, "err", err)
		return nil, connect.NewError(connect.CodeUnknown, errors.New("the call's transaction failed to commit; it may or may not have taken effect; send an Idempotency-Key to make retries safe"))
	}
	return nil, i.fail(ctx, req, err)
}

// callKey is the call's key, from its header or its request;
// protocodec.ErrNoKey when it has none.
func callKey(req connect.AnyRequest, msg proto.Message, fromRequest func(proto.Message) string) (string, error) {
	return rpckey.CallKey(req.Header().Values(KeyHeader), msg, fromRequest, "Idempotency-Key header", "Idempotency-Key headers")
}

// WrapStreamingClient passes client streams through.
func (i *interceptor[TTx]) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler refuses a stream that carries an idempotency key,
// with Unimplemented: a stream's messages cannot be stored and replayed as
// one reply, and a key silently ignored would promise what is not kept.
// Streams without a key pass through.
func (i *interceptor[TTx]) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if len(conn.RequestHeader().Values(KeyHeader)) > 0 {
			return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("idempotency keys are not supported on streaming calls (%s): send it without an Idempotency-Key, or make it unary", conn.Spec().Procedure))
		}
		return next(ctx, conn)
	}
}
