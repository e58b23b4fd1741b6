package uuid

import "testing"

func TestFormat(t *testing.T) {
	t.Parallel()
	var ones [16]byte
	for i := range ones {
		ones[i] = 0xff
	}
	for _, c := range []struct {
		version byte
		u       [16]byte
		want    string
	}{
		{7, [16]byte{}, "00000000-0000-7000-8000-000000000000"},
		{8, ones, "ffffffff-ffff-8fff-bfff-ffffffffffff"},
		{8, [16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef},
			"01234567-89ab-8def-8123-456789abcdef"},
	} {
		if got := Format(c.version, c.u); got != c.want {
			t.Errorf("Format(%d, %x) = %s, want %s", c.version, c.u, got, c.want)
		}
	}
}
