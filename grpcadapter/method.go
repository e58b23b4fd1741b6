package grpcadapter

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// DefaultMethods is the default choice of methods, for the server and the
// client interceptors: every unary method whose idempotency_level option
// is not NO_SIDE_EFFECTS (a read needs no key). A method whose descriptor
// the program does not have in protoregistry.GlobalFiles (generated code
// registers it) is handled too.
func DefaultMethods(fullMethod string) bool {
	m, ok := methodOf(fullMethod)
	if !ok {
		return true
	}
	return !m.streaming && m.level != descriptorpb.MethodOptions_NO_SIDE_EFFECTS
}

// method is what the interceptors need of a method's descriptor.
type method struct {
	level     descriptorpb.MethodOptions_IdempotencyLevel
	streaming bool
}

var methods sync.Map // full method name -> method, or nil when unknown

// methodOf looks fullMethod up in the registry of generated files.
func methodOf(fullMethod string) (method, bool) {
	if v, ok := methods.Load(fullMethod); ok {
		m, known := v.(method)
		return m, known
	}
	m, ok := lookup(fullMethod)
	if ok {
		methods.Store(fullMethod, m)
	} else {
		methods.Store(fullMethod, nil)
	}
	return m, ok
}

func lookup(fullMethod string) (method, bool) {
	svc, name, ok := splitMethod(fullMethod)
	if !ok {
		return method{}, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return method{}, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return method{}, false
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return method{}, false
	}
	m := method{streaming: md.IsStreamingClient() || md.IsStreamingServer()}
	if o, ok := md.Options().(*descriptorpb.MethodOptions); ok {
		m.level = o.GetIdempotencyLevel()
	}
	return m, true
}

// splitMethod splits "/package.Service/Method".
func splitMethod(fullMethod string) (service, name string, ok bool) {
	rest, ok := strings.CutPrefix(fullMethod, "/")
	if !ok {
		return "", "", false
	}
	service, name, ok = strings.Cut(rest, "/")
	return service, name, ok && service != "" && name != "" && !strings.Contains(name, "/")
}
