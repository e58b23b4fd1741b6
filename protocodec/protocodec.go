// Package protocodec stores protobuf messages as the values of idempotent
// calls, and fingerprints protobuf requests. The gRPC and Connect adapters
// build on it; call it directly to run Do with a message as its value:
//
//	store := pgStore.WithCodec(protocodec.Codec)
//	p, err := idempotency.Do(ctx, store, key, protocodec.Params(method, req),
//		func(ctx context.Context, tx pgx.Tx) (*paymentsv1.Payment, error) { ... })
//
// JSON, the store's default codec, cannot do this: encoding/json does not
// know a oneof, and protojson's output is not stable across releases.
//
// It is a module of its own so that the core module does not require
// google.golang.org/protobuf.
package protocodec

import (
	"errors"
	"fmt"
	"reflect"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/exactlyonce/idempotency"
)

// Codec is an idempotency.Codec for protobuf messages: a value is stored
// as a google.protobuf.Any (its type's full name and its deterministic
// binary encoding) and decoded into the same type. The value type T of
// the call may be the message's own pointer type (*paymentsv1.Payment) or
// proto.Message, for callers that learn the type from the stored value;
// the type must then be registered (generated code registers its types in
// protoregistry.GlobalTypes).
var Codec idempotency.Codec = codec{}

type codec struct{}

var deterministic = proto.MarshalOptions{Deterministic: true}

func (codec) String() string { return "protobuf" }

func (codec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("protocodec: want a proto.Message, got %T", v)
	}
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil, fmt.Errorf("protocodec: a nil %T cannot be stored; return an empty message instead", v)
	}
	b, err := deterministic.Marshal(m)
	if err != nil {
		return nil, err
	}
	return deterministic.Marshal(&anypb.Any{
		TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()),
		Value:   b,
	})
}

var messageType = reflect.TypeFor[proto.Message]()

func (codec) Unmarshal(data []byte, v any) error {
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return fmt.Errorf("protocodec: the stored value is not a protobuf Any: %w", err)
	}
	if p, ok := v.(*proto.Message); ok {
		m, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("protocodec: %w (is the generated code of %s linked in?)", err, a.GetTypeUrl())
		}
		*p = m
		return nil
	}
	// v is a **M for a generated message type *M.
	pv := reflect.ValueOf(v)
	if pv.Kind() != reflect.Pointer || pv.IsNil() || !pv.Elem().Type().Implements(messageType) || pv.Elem().Kind() != reflect.Pointer {
		return fmt.Errorf("protocodec: cannot decode into %T: the call's value type must be a generated message pointer or proto.Message", v)
	}
	m := reflect.New(pv.Elem().Type().Elem()).Interface().(proto.Message)
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("protocodec: %w", err)
	}
	pv.Elem().Set(reflect.ValueOf(m))
	return nil
}

// Params returns what identifies a request for idempotency.Do's params:
// the method's name and the request's deterministic binary encoding, so
// that the same request under the same key matches and any change to it
// (a field, an unknown field a newer client sent) does not. Deterministic
// encoding is stable for one build; a new release of the protobuf runtime
// may change it, which makes retries across that deploy mismatch rather
// than run twice.
func Params(method string, req proto.Message) (any, error) {
	if req == nil || !req.ProtoReflect().IsValid() {
		return nil, errors.New("protocodec: Params of a nil request")
	}
	b, err := deterministic.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("protocodec: the request cannot be encoded: %w", err)
	}
	return params{Method: method, Request: b}, nil
}

// params is what Params returns; encoding/json encodes Request as base64,
// so the store's fingerprint is of the bytes themselves.
type params struct {
	Method  string `json:"method"`
	Request []byte `json:"request"`
}
