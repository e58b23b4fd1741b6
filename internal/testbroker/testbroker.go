// Package testbroker gives tests the URL of a real message broker, the way
// package testdb gives them a database.
//
// URLs come from IDEMPOTENCY_NATS_URL (a NATS server with JetStream, such
// as nats://127.0.0.1:4222) and IDEMPOTENCY_RABBITMQ_URL (such as
// amqp://guest:guest@127.0.0.1:5672/); without them, testcontainers-go
// starts the broker where Docker runs; without Docker the test is skipped
// with a message that says how to provide one, except under CI=true, where
// it fails. It imports no broker client, so the core module needs none.
//
// Compare is the loop of the inbox adapters' consume benchmarks.
package testbroker

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Env names the environment variable of each broker's URL.
var Env = map[string]string{"nats": "IDEMPOTENCY_NATS_URL", "rabbitmq": "IDEMPOTENCY_RABBITMQ_URL"}

var example = map[string]string{
	"nats":     "nats://127.0.0.1:4222, a nats-server started with -js",
	"rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}

// NATS returns the URL of a NATS server with JetStream.
func NATS(t testing.TB) string { t.Helper(); return url(t, "nats") }

// RabbitMQ returns the AMQP URL of a RabbitMQ server.
func RabbitMQ(t testing.TB) string { t.Helper(); return url(t, "rabbitmq") }

type container struct {
	once sync.Once
	url  string
	err  error
}

var containers = map[string]*container{"nats": {}, "rabbitmq": {}}

func url(t testing.TB, broker string) string {
	t.Helper()
	if u := os.Getenv(Env[broker]); u != "" {
		return u
	}
	c := containers[broker]
	c.once.Do(func() { c.url, c.err = startBroker(broker) })
	if c.err != nil {
		msg := fmt.Sprintf("no %s broker: set %s (for example %s) or run Docker for testcontainers: %v",
			broker, Env[broker], example[broker], c.err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return c.url
}

// startBroker starts a container; tests of this package replace it.
var startBroker = startContainer

func startContainer(broker string) (u string, err error) {
	defer func() {
		// testcontainers panics in some environments without Docker.
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	image, port, scheme, opts := "nats:2.10-alpine", "4222/tcp", "nats://", []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd("-js"),
		testcontainers.WithWaitStrategy(wait.ForLog("Server is ready")),
	}
	if broker == "rabbitmq" {
		image, port, scheme, opts = "rabbitmq:3.13-alpine", "5672/tcp", "amqp://guest:guest@", []testcontainers.ContainerCustomizer{
			testcontainers.WithWaitStrategy(wait.ForLog("Server startup complete").WithStartupTimeout(2 * time.Minute)),
		}
	}
	opts = append(opts, testcontainers.WithExposedPorts(port))
	c, err := testcontainers.Run(ctx, image, opts...)
	if err != nil {
		return "", err
	}
	endpoint, err := c.PortEndpoint(ctx, port, "")
	if err != nil {
		return "", err
	}
	if broker == "rabbitmq" {
		return scheme + endpoint + "/", nil
	}
	return scheme + endpoint, nil
}
