// Command grpc is a test application for mqtrace's end-to-end tests: a
// producer and a simple consumer over Apache RocketMQ 5.x's gRPC protocol
// (through the proxy), using github.com/apache/rocketmq-clients/golang/v5.
//
//	grpc produce --endpoint H:P --topic T --count N [--tag TagA] [--keys key-{i}] [--body text] [--tls]
//	grpc consume --endpoint H:P --topic T --group G --expect N [--timeout-s 60] [--tag expr] [--tls]
//
// stdout carries only JSON objects, one per line; everything else (client
// logs included) goes to stderr. TLS is off unless --tls. See ../README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"mqtrace-tests/jsonout"
	"os"
	"strings"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"
	"go.uber.org/zap"
)

// setupClient configures the process-wide state of the v5 client; it must run
// before any client is made.
//
//   - TLS: the client decides at dial time from the package variable
//     EnableSsl, which its init() reads from the environment variable
//     "rocketmq.client.enableSsl" (default "true"). We set both.
//   - Logs: the client's own logger (zap, lumberjack file under
//     $HOME/logs/rocketmq/rocketmq_client_go.log by default, or stdout with
//     "mq.consoleAppender.enabled=true") is rebuilt to write to the process's
//     stdout, which claimStdout has pointed at stderr; level from
//     "rocketmq.client.logLevel" (default here: error).
//   - The gRPC interceptor logger (a second zap logger writing info lines to
//     /tmp/rocketmq-logger.log for every call) is replaced by a no-op one
//     through the exported NewRpcClient hook.
func setupClient(useTLS bool) {
	if useTLS {
		os.Setenv(rmq.CLIENT_ENABLE_SSL, "true")
	} else {
		os.Setenv(rmq.CLIENT_ENABLE_SSL, "false")
	}
	rmq.EnableSsl = useTLS

	os.Setenv(rmq.ENABLE_CONSOLE_APPENDER, "true")
	if os.Getenv(rmq.CLIENT_LOG_LEVEL) == "" {
		os.Setenv(rmq.CLIENT_LOG_LEVEL, "error")
	}
	rmq.ResetLogger()

	orig := rmq.NewRpcClient
	rmq.NewRpcClient = func(target string, opts ...rmq.RpcClientOption) (rmq.RpcClient, error) {
		opts = append(opts, rmq.WithRpcClientConnOption(rmq.WithZapLogger(zap.NewNop())))
		return orig(target, opts...)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  grpc produce --endpoint H:P --topic T --count N [--tag TagA] [--keys key-{i}] [--body text] [--tls]
  grpc consume --endpoint H:P --topic T --group G --expect N [--timeout-s 60] [--tag expr] [--tls]
`)
	os.Exit(2)
}

func main() {
	jsonout.Claim("grpc")
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "produce":
		produce(os.Args[2:])
	case "consume":
		consume(os.Args[2:])
	default:
		usage()
	}
}

// expand replaces {i} and <i> in a template with the message index.
func expand(tmpl string, i int) string {
	s := fmt.Sprint(i)
	return strings.ReplaceAll(strings.ReplaceAll(tmpl, "{i}", s), "<i>", s)
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type sendLine struct {
	MsgID  string  `json:"msgId"`
	Topic  string  `json:"topic"`
	Offset int64   `json:"offset"`
	Status string  `json:"status"`
	Tag    *string `json:"tag"`
	Keys   *string `json:"keys"`
}

func produce(args []string) {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "proxy gRPC endpoint host:port (required)")
	topic := fs.String("topic", "", "topic (required; must exist with message.type=NORMAL)")
	count := fs.Int("count", 1, "number of messages (sync sends)")
	tag := fs.String("tag", "", "tag of every message")
	keys := fs.String("keys", "", "keys template; {i} or <i> become the message index; commas separate several keys")
	body := fs.String("body", "mqtrace go grpc message {i}", "body template; {i} or <i> become the message index")
	useTLS := fs.Bool("tls", false, "use TLS to the proxy (off by default)")
	timeoutS := fs.Int("send-timeout-s", 10, "timeout of one send, seconds")
	fs.Parse(args)
	if *endpoint == "" || *topic == "" {
		jsonout.Fatalf("produce: --endpoint and --topic are required")
	}
	setupClient(*useTLS)

	p, err := rmq.NewProducer(&rmq.Config{Endpoint: *endpoint}, rmq.WithTopics(*topic))
	if err != nil {
		jsonout.Fatalf("new producer: %v", err)
	}
	if err := p.Start(); err != nil {
		jsonout.Fatalf("start producer (endpoint %s, tls %v): %v", *endpoint, *useTLS, err)
	}
	for i := 0; i < *count; i++ {
		msg := &rmq.Message{Topic: *topic, Body: []byte(expand(*body, i))}
		if *tag != "" {
			msg.SetTag(*tag)
		}
		var k string
		if *keys != "" {
			ks := strings.Split(expand(*keys, i), ",")
			msg.SetKeys(ks...)
			k = strings.Join(ks, " ")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeoutS)*time.Second)
		receipts, err := p.Send(ctx, msg)
		cancel()
		if err != nil {
			stop(p.GracefulStop)
			jsonout.Fatalf("send message %d to %s: %v", i, *topic, err)
		}
		if len(receipts) == 0 {
			stop(p.GracefulStop)
			jsonout.Fatalf("send message %d to %s: no receipt", i, *topic)
		}
		jsonout.Emit(sendLine{
			MsgID:  receipts[0].MessageID,
			Topic:  *topic,
			Offset: receipts[0].Offset,
			Status: "SEND_OK",
			Tag:    nullable(*tag),
			Keys:   nullable(k),
		})
	}
	jsonout.Emit(map[string]bool{"done": true})
	stop(p.GracefulStop)
}

type consumeLine struct {
	MsgID           string  `json:"msgId"`
	DeliveryAttempt int32   `json:"deliveryAttempt"`
	Topic           string  `json:"topic"`
	Offset          int64   `json:"offset"`
	Tag             *string `json:"tag"`
	Keys            *string `json:"keys"`
	Action          string  `json:"action"`
}

func consume(args []string) {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "proxy gRPC endpoint host:port (required)")
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "", "consumer group (required)")
	expect := fs.Int("expect", 1, "exit 0 once this many distinct messages were received and acked")
	timeoutS := fs.Int("timeout-s", 60, "fail when not done after this many seconds")
	tag := fs.String("tag", "*", "subscription tag expression")
	useTLS := fs.Bool("tls", false, "use TLS to the proxy (off by default)")
	awaitS := fs.Int("await-s", 5, "long-polling time of one receive, seconds")
	invisibleS := fs.Int("invisible-s", 20, "invisible duration of received messages, seconds")
	fs.Parse(args)
	if *endpoint == "" || *topic == "" || *group == "" {
		jsonout.Fatalf("consume: --endpoint, --topic and --group are required")
	}
	if *expect < 1 {
		jsonout.Fatalf("consume: --expect must be at least 1")
	}
	setupClient(*useTLS)

	c, err := rmq.NewSimpleConsumer(&rmq.Config{Endpoint: *endpoint, ConsumerGroup: *group},
		rmq.WithSimpleAwaitDuration(time.Duration(*awaitS)*time.Second),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{
			*topic: rmq.NewFilterExpression(*tag),
		}),
	)
	if err != nil {
		jsonout.Fatalf("new simple consumer: %v", err)
	}
	if err := c.Start(); err != nil {
		jsonout.Fatalf("start simple consumer (endpoint %s, tls %v): %v", *endpoint, *useTLS, err)
	}

	// The watchdog ends the process at the timeout, whatever call is under
	// way (no JSON line follows jsonout.Fatalf).
	var ackedN atomic.Int64
	watchdog := time.AfterFunc(time.Duration(*timeoutS)*time.Second, func() {
		jsonout.Fatalf("timeout after %ds: %d of %d messages received and acked from %s (group %s)",
			*timeoutS, ackedN.Load(), *expect, *topic, *group)
	})
	acked := map[string]bool{}
	for len(acked) < *expect {
		// No deadline on the context: the proxy refuses a receive whose
		// deadline leaves less than the long-polling time (ILLEGAL_POLLING_TIME);
		// the client bounds the call by await + request timeout itself.
		mvs, err := c.Receive(context.Background(), 16, time.Duration(*invisibleS)*time.Second)
		if err != nil {
			var st *rmq.ErrRpcStatus
			if errors.As(err, &st) && st.GetCode() == int32(v2.Code_MESSAGE_NOT_FOUND) {
				continue // long polling ended without messages
			}
			fmt.Fprintf(os.Stderr, "grpc: warning: receive: %v\n", err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		for _, mv := range mvs {
			line := consumeLine{
				MsgID:           mv.GetMessageId(),
				DeliveryAttempt: mv.GetDeliveryAttempt(),
				Topic:           mv.GetTopic(),
				Offset:          mv.GetOffset(),
				Keys:            nullable(strings.Join(mv.GetKeys(), " ")),
				Action:          "ack",
			}
			if t := mv.GetTag(); t != nil {
				line.Tag = nullable(*t)
			}
			if len(acked) >= *expect {
				// Done already: leave the rest unacknowledged (they come back
				// after the invisible duration) and print nothing more.
				continue
			}
			actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.Ack(actx, mv)
			acancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "grpc: warning: ack %s: %v\n", line.MsgID, err)
				line.Action = "ack-failed"
				jsonout.Emit(line)
				continue
			}
			acked[line.MsgID] = true
			ackedN.Store(int64(len(acked)))
			jsonout.Emit(line)
		}
	}
	if !watchdog.Stop() {
		select {} // the watchdog fired already and ends the process
	}
	jsonout.Emit(map[string]bool{"done": true})
	stop(c.GracefulStop)
}

// stop runs a client's GracefulStop with a time limit.
func stop(f func() error) {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		if err != nil {
			fmt.Fprintf(os.Stderr, "grpc: warning: stop: %v\n", err)
		}
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "grpc: warning: stop did not finish in 10s, giving up")
	}
}
