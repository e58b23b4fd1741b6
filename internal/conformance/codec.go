package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/exactlyonce/idempotency"
)

// rawCodec encodes a []byte value as it is: binary values (zero bytes,
// invalid UTF-8, a trailing space) and the empty value come back unchanged
// only if the store carries its codec's bytes verbatim.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: want []byte, got %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: want *[]byte, got %T", v)
	}
	*p = bytes.Clone(data)
	return nil
}

// oneWayCodec encodes but cannot decode: a value stored with it could
// never be replayed.
type oneWayCodec struct{}

func (oneWayCodec) Marshal(any) ([]byte, error) { return []byte("x"), nil }
func (oneWayCodec) Unmarshal([]byte, any) error { return errors.New("oneWayCodec cannot decode") }

// testCodecCarriesBytes: a store's codec decides the stored bytes, which
// come back unchanged, the empty value too; JSON, which would turn a
// []byte into base64 text, is not involved.
func testCodecCarriesBytes[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithCodec(rawCodec{}))
	for _, value := range [][]byte{{0, 1, 0xfe, 0xff, '"', 0}, {'{', ' '}, {}} {
		key := fmt.Sprintf("k%x", value)
		var calls atomic.Int64
		fn := func(ctx context.Context, tx TTx) ([]byte, error) {
			if _, err := e.charge(key, 1, &calls)(ctx, tx); err != nil {
				return nil, err
			}
			return value, nil
		}
		first, err := idempotency.Run(ctx, s, key, "p", fn)
		if err != nil || first.Replayed || !bytes.Equal(first.Value, value) {
			t.Fatalf("fresh call: %x (replayed %v), %v; want %x", first.Value, first.Replayed, err, value)
		}
		again, err := idempotency.Run(ctx, s, key, "p", fn)
		if err != nil || !again.Replayed || !bytes.Equal(again.Value, value) {
			t.Fatalf("replay: %x (replayed %v), %v; want %x replayed", again.Value, again.Replayed, err, value)
		}
		if calls.Load() != 1 || e.charges(t, key) != 1 {
			t.Fatalf("fn ran %d times; want 1", calls.Load())
		}
	}
}

// testCodecPerCall: WithCodec on a store changes the codec of the calls
// made on the store it returns, and of no others.
func testCodecPerCall[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	raw := s.WithCodec(rawCodec{})
	value := []byte{0xff, 0}
	fn := func(context.Context, TTx) ([]byte, error) { return value, nil }
	if got, err := idempotency.Do(ctx, raw, "raw", "p", fn); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("a call with the raw codec: %x, %v", got, err)
	}
	if got, err := idempotency.Do(ctx, raw, "raw", "p", fn); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("its replay with the raw codec: %x, %v", got, err)
	}
	// The store itself still speaks JSON: the raw bytes are not JSON.
	_, err := idempotency.Do(ctx, s, "raw", "p", fn)
	if err == nil || !strings.Contains(err.Error(), "stored value cannot be decoded (JSON)") {
		t.Fatalf("the raw value read as JSON: %v; want a decode error naming JSON", err)
	}
	if got, err := idempotency.Do(ctx, s, "json", "p", fn); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("a JSON call of a []byte: %x, %v", got, err)
	}
}

// testCodecThatCannotDecode: "decoded before anything is saved" holds for
// every codec: a value its codec cannot decode commits nothing.
func testCodecThatCannotDecode[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithCodec(oneWayCodec{}))
	var calls atomic.Int64
	_, err := idempotency.Do(ctx, s, "k", "p", e.charge("k", 1, &calls))
	if err == nil || !strings.Contains(err.Error(), "nothing was committed") || !strings.Contains(err.Error(), "oneWayCodec cannot decode") {
		t.Fatalf("a value the codec cannot decode: %v; want an error that says nothing was committed, and why", err)
	}
	if e.charges(t, "k") != 0 || e.keys(t) != 0 {
		t.Fatalf("%d charges and %d keys; want the call rolled back", e.charges(t, "k"), e.keys(t))
	}
}

// testFinalFailureCarriesPayload: a final failure's payload is stored and
// replayed byte for byte, whatever the codec.
func testFinalFailureCarriesPayload[TTx any](t *testing.T, e *suite[TTx]) {
	payload := []byte{0, 0xff, 'x', 0x80}
	for _, s := range []*idempotency.TxStore[TTx]{e.store(t), e.store(t, idempotency.WithCodec(rawCodec{})).Scope("raw")} {
		var calls atomic.Int64
		fn := func(context.Context, TTx) ([]byte, error) {
			calls.Add(1)
			return nil, &idempotency.FinalError{Code: "card_declined", Err: errDeclined, Payload: payload}
		}
		for i := range 2 {
			r, err := idempotency.Run(ctx, s, "k", "p", fn)
			var fe *idempotency.FinalError
			if !errors.As(err, &fe) || fe.Code != "card_declined" || !bytes.Equal(fe.Payload, payload) || r.Replayed != (i == 1) {
				t.Fatalf("call %d: %v (replayed %v); want the failure with its payload %x", i, err, r.Replayed, payload)
			}
		}
		if calls.Load() != 1 {
			t.Fatalf("fn ran %d times; want 1", calls.Load())
		}
	}
}
