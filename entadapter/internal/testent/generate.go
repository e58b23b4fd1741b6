// Package testent is the ent client of entadapter's tests, generated from
// ./schema.
package testent

//go:generate go run -mod=mod entgo.io/ent/cmd/ent generate ./schema
