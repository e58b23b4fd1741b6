package chaos

import (
	"strconv"
	"strings"
	"testing"
)

// TestCheckCatchesBreaches makes sure the checker is not blind: each
// invariant, broken on purpose in a hand-made state, is reported.
func TestCheckCatchesBreaches(t *testing.T) {
	value := func(key, token string) stored {
		return stored{value: []byte(`{"key":"` + key + `","amount":` + strconv.Itoa(Amount(key)) + `,"token":"` + token + `"}`)}
	}
	good := func() *State {
		return &State{
			Keys: map[string]stored{
				"a": value("a", "c1"),
				"b": {value: []byte(`{"code":"declined:c3","message":"no"}`), failed: true},
			},
			Effects: map[string][]string{"a": {"c1"}},
		}
	}
	okAnswers := []Answer{
		{Call: "c1", Key: "a", Class: ClassOK, Token: "c1", Amount: Amount("a")},
		{Call: "c2", Key: "a", Class: ClassOK, Token: "c1", Amount: Amount("a"), Replayed: true},
		{Call: "c3", Key: "b", Class: ClassFinal, Code: "declined:c3"},
		{Call: "c4", Key: "b", Class: ClassFinal, Code: "declined:c3"},
		{Call: "c5", Key: "z", Class: ClassFnError},
		{Call: "c6", Key: "a", Class: ClassUnknown},
	}
	if b := Check(good(), okAnswers); len(b) != 0 {
		t.Fatalf("a consistent state has breaches: %v", b)
	}
	tests := []struct {
		name   string
		mutate func(st *State, answers []Answer) []Answer
		want   string
	}{
		{"duplicate effect", func(st *State, a []Answer) []Answer {
			st.Effects["a"] = append(st.Effects["a"], "c2")
			return a
		}, "2 business rows"},
		{"effect without key", func(st *State, a []Answer) []Answer {
			st.Effects["z"] = []string{"c5"}
			return a
		}, "without a committed key"},
		{"effect of another call", func(st *State, a []Answer) []Answer {
			st.Effects["a"] = []string{"c9"}
			return a
		}, "business row by call c9"},
		{"effect under a final failure", func(st *State, a []Answer) []Answer {
			st.Effects["b"] = []string{"c3"}
			return a
		}, "final failure stored"},
		{"bare claim committed", func(st *State, a []Answer) []Answer {
			st.Keys["c"] = stored{}
			return a
		}, "without a value"},
		{"lost acknowledged write", func(st *State, a []Answer) []Answer {
			delete(st.Keys, "a")
			delete(st.Effects, "a")
			return a
		}, "lost acknowledged write"},
		{"answer the database disowns", func(st *State, a []Answer) []Answer {
			return append(a, Answer{Call: "c7", Key: "a", Class: ClassOK, Token: "c7", Amount: Amount("a")})
		}, "got value of call c7"},
		{"failed call committed", func(st *State, a []Answer) []Answer {
			return append(a, Answer{Call: "c1", Key: "a", Class: ClassError, Err: "boom"})
		}, "yet its write committed"},
		{"final failure the database disowns", func(st *State, a []Answer) []Answer {
			return append(a, Answer{Call: "c8", Key: "a", Class: ClassFinal, Code: "declined:c8"})
		}, "got final failure"},
		{"params mismatch", func(st *State, a []Answer) []Answer {
			return append(a, Answer{Call: "c8", Key: "a", Class: ClassMismatch})
		}, "ErrParamsMismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := good()
			answers := tt.mutate(st, append([]Answer(nil), okAnswers...))
			b := Check(st, answers)
			if len(b) == 0 || !strings.Contains(strings.Join(b, "\n"), tt.want) {
				t.Fatalf("breaches %q, want one that says %q", b, tt.want)
			}
		})
	}
}
