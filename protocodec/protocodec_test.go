package protocodec_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jmoiron/sqlx"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/protocodec"
)

// oneof is a message with a oneof (structpb.Value's kind), which
// encoding/json cannot decode.
func oneof(t *testing.T) *structpb.Value {
	t.Helper()
	v, err := structpb.NewValue(map[string]any{"card": map[string]any{"last4": "4242"}, "amount": 100.0})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestDoReplaysTheMessage runs Do with a protobuf message as its value on
// every database: the fresh answer and the replay are equal to what fn
// returned, in the message's own type and as proto.Message.
func TestDoReplaysTheMessage(t *testing.T) {
	for _, b := range testdb.Backends() {
		if b.Server == "tidb" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			e := conformance.OpenSQL(t, b)
			s := e.NewStore(t, idempotency.WithCodec(protocodec.Codec))
			want := oneof(t)
			req := wrapperspb.String("create")
			params, err := protocodec.Params("/payments.v1.Payments/Create", req)
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			fn := func(ctx context.Context, tx *sqlx.Tx) (*structpb.Value, error) {
				calls.Add(1)
				return want, e.Charge(ctx, tx, "k", 1)
			}
			for i := range 2 {
				r, err := idempotency.Run(context.Background(), s, "k", params, fn)
				if err != nil || r.Replayed != (i == 1) || !proto.Equal(r.Value, want) {
					t.Fatalf("call %d: %v (replayed %v), %v; want %v", i, r.Value, r.Replayed, err, want)
				}
				if i == 0 && r.Value == want {
					t.Fatal("the fresh answer is fn's own message, not the decoded one a replay gets")
				}
			}
			// As proto.Message: the type comes from the stored value.
			r, err := idempotency.Run(context.Background(), s, "k", params, func(context.Context, *sqlx.Tx) (proto.Message, error) {
				return nil, errors.New("fn ran on a replay")
			})
			if err != nil || !r.Replayed || !proto.Equal(r.Value, want) {
				t.Fatalf("replay as proto.Message: %v, %v", r.Value, err)
			}
			if calls.Load() != 1 || conformance.Charges(t, e, "k") != 1 {
				t.Fatalf("fn ran %d times; want 1", calls.Load())
			}
			other, _ := protocodec.Params("/payments.v1.Payments/Create", wrapperspb.String("other"))
			if _, err := idempotency.Do(context.Background(), s, "k", other, fn); !errors.Is(err, idempotency.ErrParamsMismatch) {
				t.Fatalf("another request under the key: %v; want ErrParamsMismatch", err)
			}
		})
	}
}

func TestParamsAreDeterministic(t *testing.T) {
	m := func(keys ...string) *structpb.Struct {
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for _, k := range keys {
			s.Fields[k] = structpb.NewStringValue(k)
		}
		return s
	}
	var first []byte
	for range 20 { // map order is random: every encoding must be the same
		p, err := protocodec.Params("/m", m("a", "b", "c", "d", "e", "f"))
		if err != nil {
			t.Fatal(err)
		}
		fp, err := idempotency.Fingerprint(p)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = fp
		} else if string(fp) != string(first) {
			t.Fatal("two encodings of one map gave two fingerprints")
		}
	}
	p1, _ := protocodec.Params("/a", m("x"))
	p2, _ := protocodec.Params("/b", m("x"))
	f1, _ := idempotency.Fingerprint(p1)
	f2, _ := idempotency.Fingerprint(p2)
	if string(f1) == string(f2) {
		t.Fatal("the same request to two methods has one fingerprint")
	}
	if _, err := protocodec.Params("/m", nil); err == nil {
		t.Fatal("Params(nil) was accepted")
	}
}

func TestCodecRefusesWhatItCannotCarry(t *testing.T) {
	c := protocodec.Codec
	if _, err := c.Marshal("text"); err == nil || !strings.Contains(err.Error(), "want a proto.Message") {
		t.Errorf("Marshal of a string: %v", err)
	}
	var nilMsg *structpb.Value
	if _, err := c.Marshal(nilMsg); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Errorf("Marshal of a nil message: %v", err)
	}
	b, err := c.Marshal(structpb.NewStringValue("x"))
	if err != nil {
		t.Fatal(err)
	}
	var s string
	if err := c.Unmarshal(b, &s); err == nil {
		t.Error("Unmarshal into a string was accepted")
	}
	var w *wrapperspb.StringValue
	if err := c.Unmarshal(b, &w); err == nil {
		t.Error("Unmarshal of a Value into a StringValue was accepted")
	}
	if err := c.Unmarshal([]byte("{}"), new(proto.Message)); err == nil {
		t.Error("Unmarshal of JSON was accepted")
	}
}
