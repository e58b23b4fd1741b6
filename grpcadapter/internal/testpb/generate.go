package testpb

// The generated code is checked in. To generate it again (protoc,
// protoc-gen-go and protoc-gen-go-grpc on PATH): go generate.
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative payments.proto
