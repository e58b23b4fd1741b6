// Package uuid formats 16 bytes as an RFC 9562 UUID of a given version: the
// one layout that httpadapter's random keys (version 7) and the root
// package's derived keys (version 8) share.
package uuid

import "encoding/hex"

// Format sets the version (the high four bits of byte 6) and the variant
// 10 (the high two bits of byte 8) in u, and returns it in the canonical
// form: 36 lower-case hex digits and hyphens, 8-4-4-4-12.
func Format(version byte, u [16]byte) string {
	u[6] = version<<4 | u[6]&0x0f
	u[8] = 0x80 | u[8]&0x3f
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
	return string(s[:])
}
