package testpb

// The generated code is checked in. To generate it again (protoc,
// protoc-gen-go and protoc-gen-connect-go on PATH): go generate.
//go:generate protoc --go_out=. --go_opt=paths=source_relative --connect-go_out=. --connect-go_opt=paths=source_relative payments.proto
