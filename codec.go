package idempotency

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Codec turns the values fn returns into the bytes a key stores, and those
// bytes back into values. Marshal gets fn's value (a T); Unmarshal gets a
// pointer to a zero T. The default, JSON, is encoding/json. A value that
// JSON cannot carry (a protobuf message with a oneof, say) needs a codec
// of its own: the adapters for gRPC and Connect bring one for protobuf.
//
// Whatever the codec, Do encodes fn's value and decodes it into T before
// anything is saved, so a value that could not be replayed is refused
// (nothing commits), and the first caller gets what a retry will get.
//
// A stored value is read with the codec of the call that reads it: keep
// one codec per kind of call for as long as its keys live (WithTTL).
// Final failures are stored apart from values, and read by every codec.
//
// JSON's bytes are stored as they are. Any other codec's get one zero
// byte after them: binary encodings may be empty, or end in a space, and
// the stores keep neither apart (SQLite reads an empty BLOB as NULL, the
// MySQL store pads values with spaces). The zero byte also tells a value
// JSON wrote from one that another codec did, so reading a key with the
// wrong codec is an error, not a wrong value.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec: encoding/json.
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) String() string                     { return "JSON" }

// WithCodec sets the codec of the store's values; the default is JSON.
// TxStore.WithCodec sets it for some calls alone.
func WithCodec(c Codec) Option {
	return func(cfg *config) error {
		if c == nil {
			return errors.New("idempotency: WithCodec(nil): want a codec (idempotency.JSON is the default)")
		}
		cfg.codec = c
		return nil
	}
}

// WithCodec returns a store that shares s's database, options and scope
// but encodes and decodes values with c: the calls made on it use c, those
// made on s keep s's codec. WithCodec(nil) returns a store with the codec
// of the store's options (WithCodec, or JSON).
func (s *TxStore[TTx]) WithCodec(c Codec) *TxStore[TTx] {
	cp := *s
	cp.codec = c
	return &cp
}

// valueCodec is the codec of s's calls.
func (s *TxStore[TTx]) valueCodec() Codec {
	switch {
	case s.codec != nil:
		return s.codec
	case s.cfg.codec != nil:
		return s.cfg.codec
	}
	return JSON
}

// trailer ends the stored bytes of every codec but JSON.
const trailer = 0

// encode is c's encoding of v as the store keeps it.
func encode(c Codec, v any) ([]byte, error) {
	b, err := c.Marshal(v)
	if err != nil {
		return nil, err
	}
	if _, ok := c.(jsonCodec); ok {
		return b, nil
	}
	return append(b[:len(b):len(b)], trailer), nil
}

// decode decodes what encode stored into v.
func decode(c Codec, b []byte, v any) error {
	if _, ok := c.(jsonCodec); !ok {
		if len(b) == 0 || b[len(b)-1] != trailer {
			return errors.New("the stored bytes were not written by this codec (JSON wrote them, or another version of the store)")
		}
		b = b[:len(b)-1]
	}
	return c.Unmarshal(b, v)
}

// codecName names c in errors: "JSON", its String, or its type.
func codecName(c Codec) string {
	if s, ok := c.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("codec %T", c)
}
