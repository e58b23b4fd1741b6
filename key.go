package idempotency

import (
	"fmt"

	"github.com/exactlyonce/idempotency/dialects"
)

// MaxKeyLen is the longest key (and scope) in bytes.
const MaxKeyLen = 255

// lockID is FNV-1a (64 bits) of scope, a zero byte and key: stable across
// processes, so every instance locks the same number for a key. For a key
// table other than the default, the table's name and a zero byte come
// first: Postgres's advisory locks are one number space per database, and
// the same key in two tables names two calls. (The default table keeps the
// number every earlier version took, so instances of two versions still
// exclude each other during a rolling deploy.) Written out rather than
// through hash/fnv, which allocates on every call of Do.
func lockID(table, scope, key string) int64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	if table != dialects.DefaultTable {
		for i := 0; i < len(table); i++ {
			h = (h ^ uint64(table[i])) * prime
		}
		h *= prime
	}
	for i := 0; i < len(scope); i++ {
		h = (h ^ uint64(scope[i])) * prime
	}
	h *= prime // the zero byte between them
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * prime
	}
	return int64(h)
}

// ValidateKey reports whether key is a valid idempotency key: 1 to 255
// bytes of printable ASCII (0x20 to 0x7E). The error wraps ErrInvalidKey.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: the key is empty", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: the key is %d bytes, longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: byte %d is %#02x, not printable ASCII", ErrInvalidKey, i, c)
		}
	}
	return nil
}
