// Command remoting is a test application for mqtrace's end-to-end tests: a
// producer and a push consumer over Apache RocketMQ's remoting protocol,
// using github.com/apache/rocketmq-client-go/v2 (talks to the name server and
// straight to the broker, no proxy).
//
//	remoting produce --namesrv H:P --topic T [--group G] --count N [--tag TagA] [--keys key-{i}] [--body text]
//	remoting consume --namesrv H:P --topic T --group G --expect N [--timeout-s 60] [--fail-first K] [--tag expr] [--linger-ms MS]
//
// stdout carries only JSON objects, one per line; everything else (client
// logs included) goes to stderr. See ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"mqtrace-tests/jsonout"
	"os"
	"strings"
	"sync"
	"time"

	rocketmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  remoting produce --namesrv H:P --topic T [--group G] --count N [--tag TagA] [--keys key-{i}] [--body text]
  remoting consume --namesrv H:P --topic T --group G --expect N [--timeout-s 60] [--fail-first K] [--tag expr] [--linger-ms MS]
`)
	os.Exit(2)
}

func main() {
	jsonout.Claim("remoting")
	// rocketmq-client-go logs through logrus to stderr at info level; keep
	// only errors unless ROCKETMQ_GO_LOG_LEVEL says otherwise.
	if os.Getenv("ROCKETMQ_GO_LOG_LEVEL") == "" {
		rlog.SetLogLevel("error")
	}
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

func sendStatus(s primitive.SendStatus) string {
	switch s {
	case primitive.SendOK:
		return "SEND_OK"
	case primitive.SendFlushDiskTimeout:
		return "FLUSH_DISK_TIMEOUT"
	case primitive.SendFlushSlaveTimeout:
		return "FLUSH_SLAVE_TIMEOUT"
	case primitive.SendSlaveNotAvailable:
		return "SLAVE_NOT_AVAILABLE"
	default:
		return fmt.Sprintf("UNKNOWN_%d", int(s))
	}
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type sendLine struct {
	MsgID       string  `json:"msgId"`
	OffsetMsgID string  `json:"offsetMsgId"`
	Topic       string  `json:"topic"`
	QueueID     int     `json:"queueId"`
	QueueOffset int64   `json:"queueOffset"`
	Status      string  `json:"status"`
	Tag         *string `json:"tag"`
	Keys        *string `json:"keys"`
}

func produce(args []string) {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	namesrv := fs.String("namesrv", "", "name server address(es), host:port[;host:port] (required)")
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "mqtrace-go-producer", "producer group")
	count := fs.Int("count", 1, "number of messages (sync sends)")
	tag := fs.String("tag", "", "tag of every message")
	keys := fs.String("keys", "", "keys template; {i} or <i> become the message index; commas separate several keys")
	body := fs.String("body", "mqtrace go remoting message {i}", "body template; {i} or <i> become the message index")
	timeoutS := fs.Int("send-timeout-s", 10, "timeout of one send, seconds")
	fs.Parse(args)
	if *topic == "" || *namesrv == "" {
		jsonout.Fatalf("produce: --namesrv and --topic are required")
	}

	p, err := rocketmq.NewProducer(
		producer.WithNsResolver(primitive.NewPassthroughResolver(strings.Split(*namesrv, ";"))),
		producer.WithGroupName(*group),
		producer.WithRetry(2),
		producer.WithSendMsgTimeout(time.Duration(*timeoutS)*time.Second),
	)
	if err != nil {
		jsonout.Fatalf("new producer: %v", err)
	}
	if err := p.Start(); err != nil {
		jsonout.Fatalf("start producer: %v", err)
	}
	defer p.Shutdown()

	for i := 0; i < *count; i++ {
		msg := primitive.NewMessage(*topic, []byte(expand(*body, i)))
		if *tag != "" {
			msg.WithTag(*tag)
		}
		var k string
		if *keys != "" {
			ks := strings.Split(expand(*keys, i), ",")
			msg.WithKeys(ks)
			k = strings.Join(ks, " ")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeoutS+5)*time.Second)
		res, err := p.SendSync(ctx, msg)
		cancel()
		if err != nil {
			p.Shutdown()
			jsonout.Fatalf("send message %d to %s: %v", i, *topic, err)
		}
		line := sendLine{
			MsgID:       res.MsgID,
			OffsetMsgID: res.OffsetMsgID,
			Topic:       *topic,
			QueueOffset: res.QueueOffset,
			Status:      sendStatus(res.Status),
			Tag:         nullable(*tag),
			Keys:        nullable(k),
		}
		if res.MessageQueue != nil {
			line.QueueID = res.MessageQueue.QueueId
		}
		jsonout.Emit(line)
		if res.Status != primitive.SendOK {
			p.Shutdown()
			jsonout.Fatalf("send message %d: status %s", i, line.Status)
		}
	}
	jsonout.Emit(map[string]bool{"done": true})
}

type consumeLine struct {
	MsgID          string  `json:"msgId"`
	OffsetMsgID    string  `json:"offsetMsgId"`
	ReconsumeTimes int32   `json:"reconsumeTimes"`
	Topic          string  `json:"topic"`
	QueueID        int     `json:"queueId"`
	QueueOffset    int64   `json:"queueOffset"`
	Tag            *string `json:"tag"`
	Keys           *string `json:"keys"`
	Result         string  `json:"result"`
}

func consume(args []string) {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	namesrv := fs.String("namesrv", "", "name server address(es), host:port[;host:port] (required)")
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "", "consumer group (required)")
	expect := fs.Int("expect", 1, "exit 0 once this many distinct messages were consumed successfully")
	timeoutS := fs.Int("timeout-s", 60, "fail when not done after this many seconds")
	failFirst := fs.Int("fail-first", 0, "the first K deliveries of each message return RECONSUME_LATER")
	tag := fs.String("tag", "*", "subscription tag expression")
	lingerMs := fs.Int("linger-ms", 0, "after the last message, run on this long before shutting down "+
		"(the client commits consumed offsets every 5 s; its shutdown may miss the last ones)")
	fs.Parse(args)
	if *namesrv == "" || *topic == "" || *group == "" {
		jsonout.Fatalf("consume: --namesrv, --topic and --group are required")
	}
	if *expect < 1 {
		jsonout.Fatalf("consume: --expect must be at least 1")
	}

	var (
		mu         sync.Mutex
		deliveries = map[string]int{}
		succeeded  = map[string]bool{}
		finished   bool
		done       = make(chan struct{})
		never      = make(chan struct{})
	)

	c, err := rocketmq.NewPushConsumer(
		consumer.WithNsResolver(primitive.NewPassthroughResolver(strings.Split(*namesrv, ";"))),
		consumer.WithGroupName(*group),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
		consumer.WithConsumeMessageBatchMaxSize(1),
	)
	if err != nil {
		jsonout.Fatalf("new push consumer: %v", err)
	}
	err = c.Subscribe(*topic, consumer.MessageSelector{Type: consumer.TAG, Expression: *tag},
		func(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			if finished {
				// Done already: hold the delivery (never acknowledged, so it
				// stays for the group's next consumer) and print nothing after
				// the final line.
				mu.Unlock()
				<-never
			}
			defer mu.Unlock()
			result := consumer.ConsumeSuccess
			// The batch size is 1; still, one failing message fails the batch.
			for _, m := range msgs {
				id := m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex)
				if id == "" {
					id = m.MsgId
				}
				deliveries[id]++
				if deliveries[id] <= *failFirst {
					result = consumer.ConsumeRetryLater
				}
			}
			for _, m := range msgs {
				id := m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex)
				if id == "" {
					id = m.MsgId
				}
				line := consumeLine{
					MsgID:          id,
					OffsetMsgID:    m.OffsetMsgId,
					ReconsumeTimes: m.ReconsumeTimes,
					Topic:          m.Topic,
					QueueOffset:    m.QueueOffset,
					Tag:            nullable(m.GetTags()),
					Keys:           nullable(m.GetKeys()),
					Result:         "CONSUME_SUCCESS",
				}
				if m.Queue != nil {
					line.QueueID = m.Queue.QueueId
				}
				if result != consumer.ConsumeSuccess {
					line.Result = "RECONSUME_LATER"
				} else {
					succeeded[id] = true
				}
				jsonout.Emit(line)
			}
			if len(succeeded) >= *expect && !finished {
				finished = true
				jsonout.Emit(map[string]bool{"done": true})
				close(done)
			}
			return result, nil
		})
	if err != nil {
		jsonout.Fatalf("subscribe %s: %v", *topic, err)
	}
	if err := c.Start(); err != nil {
		jsonout.Fatalf("start push consumer: %v", err)
	}

	code := 0
	select {
	case <-done:
		time.Sleep(time.Duration(*lingerMs) * time.Millisecond)
	case <-time.After(time.Duration(*timeoutS) * time.Second):
		mu.Lock()
		if !finished { // else done was printed just now: success
			finished = true // no more output
			fmt.Fprintf(os.Stderr, "remoting: error: timeout after %ds: %d of %d messages consumed successfully from %s (group %s)\n",
				*timeoutS, len(succeeded), *expect, *topic, *group)
			code = 1
		}
		mu.Unlock()
	}
	shutdown(c.Shutdown, 10*time.Second)
	os.Exit(code)
}

// shutdown runs stop with a time limit (it persists the consumed offsets).
func shutdown(stop func() error, limit time.Duration) {
	ch := make(chan error, 1)
	go func() { ch <- stop() }()
	select {
	case err := <-ch:
		if err != nil {
			fmt.Fprintf(os.Stderr, "remoting: warning: shutdown: %v\n", err)
		}
	case <-time.After(limit):
		fmt.Fprintf(os.Stderr, "remoting: warning: shutdown did not finish in %v, giving up\n", limit)
	}
}
