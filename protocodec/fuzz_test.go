package protocodec_test

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/protocodec"
)

// FuzzParams: a request decoded from any bytes has one fingerprint, the
// same after its deterministic encoding is decoded again (a retry that
// went through another process), and the codec round-trips it.
func FuzzParams(f *testing.F) {
	seed, _ := structpb.NewStruct(map[string]any{"a": 1.0, "b": "x", "c": []any{true, nil}})
	b, _ := proto.Marshal(seed)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x03, 'k', 0x12, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := new(structpb.Struct)
		if proto.Unmarshal(raw, req) != nil {
			return
		}
		fp := func(m proto.Message) []byte {
			p, err := protocodec.Params("/m", m)
			if err != nil {
				t.Fatal(err)
			}
			sum, err := idempotency.Fingerprint(p)
			if err != nil {
				t.Fatal(err)
			}
			return sum
		}
		first := fp(req)
		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again := new(structpb.Struct)
		if err := proto.Unmarshal(enc, again); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, fp(again)) || !bytes.Equal(first, fp(req)) {
			t.Fatal("one request, two fingerprints")
		}
		stored, err := protocodec.Codec.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var back *structpb.Struct
		if err := protocodec.Codec.Unmarshal(stored, &back); err != nil || !proto.Equal(back, req) {
			t.Fatalf("round trip: %v, %v", back, err)
		}
	})
}
