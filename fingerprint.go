package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
)

// Fingerprint returns the SHA-256 of params' JSON encoding: the same value
// always gives the same fingerprint (map keys are sorted; a struct keeps its
// field order), so a retry with equal params matches the stored call.
//
// Strings must be valid UTF-8: JSON would turn every invalid byte into
// U+FFFD and make different params look the same, so they are refused.
// Pass binary data as []byte.
func Fingerprint(params any) ([]byte, error) {
	b, err := json.Marshal(params)
	if err != nil {
		return nil, badParams(err)
	}
	if replacedInvalidUTF8(b) {
		return nil, badParams(errors.New("a string is not valid UTF-8 (pass binary data as []byte)"))
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// replacedInvalidUTF8 reports whether encoding/json replaced an invalid
// byte: it writes the escape \ufffd only then (a valid U+FFFD is written as
// is), and an escape is one whose backslash is not itself escaped.
func replacedInvalidUTF8(b []byte) bool {
	const esc = `\ufffd`
	for i := bytes.Index(b, []byte(esc)); i >= 0; {
		n := 0
		for j := i; j >= 0 && b[j] == '\\'; j-- {
			n++
		}
		if n%2 == 1 {
			return true
		}
		next := bytes.Index(b[i+1:], []byte(esc))
		if next < 0 {
			return false
		}
		i += 1 + next
	}
	return false
}
