package httpadapter

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/uuid"
)

// KeyHeader is the request header that carries the idempotency key.
const KeyHeader = "Idempotency-Key"

// ReplayedHeader is the response header a replay carries, set to "true".
const ReplayedHeader = "Idempotent-Replayed"

// errNoKey: the request has no Idempotency-Key header.
var errNoKey = errors.New("httpadapter: no Idempotency-Key header")

// ParseKey returns the key an Idempotency-Key header value carries. The
// value is a bare key (abc) or a structured-field string ("abc", with \"
// and \\ escapes, RFC 8941); both give the same key. The key must be 1 to
// 255 bytes of printable ASCII. Errors wrap idempotency.ErrInvalidKey.
func ParseKey(value string) (string, error) {
	v := strings.Trim(value, " \t")
	if v == "" || v[0] != '"' {
		if err := idempotency.ValidateKey(v); err != nil {
			return "", err
		}
		return v, nil
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", fmt.Errorf("%w: in a quoted key, a backslash escapes only \" and \\", idempotency.ErrInvalidKey)
			}
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", fmt.Errorf("%w: text after the closing quote", idempotency.ErrInvalidKey)
			}
			key := b.String()
			if err := idempotency.ValidateKey(key); err != nil {
				return "", err
			}
			return key, nil
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: byte %d is %#02x, not printable ASCII", idempotency.ErrInvalidKey, i, c)
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("%w: a quoted key has no closing quote", idempotency.ErrInvalidKey)
}

// requestKey returns the request's key, errNoKey, or an invalid-key error.
func requestKey(h http.Header) (string, error) {
	values := h.Values(KeyHeader)
	switch len(values) {
	case 0:
		return "", errNoKey
	case 1:
		return ParseKey(values[0])
	}
	return "", fmt.Errorf("%w: %d Idempotency-Key headers; send one", idempotency.ErrInvalidKey, len(values))
}

// NewKey returns a fresh random key: a UUIDv7 (RFC 9562), whose time-ordered
// prefix keeps the key table's index compact.
func NewKey() string {
	var u [16]byte
	binary.BigEndian.PutUint64(u[:8], uint64(time.Now().UnixMilli())<<16)
	if _, err := rand.Read(u[6:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return uuid.Format(7, u)
}
