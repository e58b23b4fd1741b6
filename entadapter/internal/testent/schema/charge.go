// Package schema is the ent schema of entadapter's tests: the conformance
// suite's charges table.
package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
)

// Charge is a row of the suite's charges table; its ref is the ID.
type Charge struct {
	ent.Schema
}

// Annotations names the table.
func (Charge) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Annotation{Table: "charges"}}
}

// Fields of a charge.
func (Charge) Fields() []ent.Field {
	return []ent.Field{
		field.String("id").StorageKey("ref"),
		field.Int("amount"),
	}
}
