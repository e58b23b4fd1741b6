package paymentsv1

// The generated code is checked in, so that nothing needs protoc to build.
// To generate it again (protoc, protoc-gen-go and protoc-gen-go-grpc on
// PATH): go generate ./examples/grpc/paymentsv1
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative payments.proto
