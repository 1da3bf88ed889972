// A user of Debian's kafka-go (0.2.x) against Portask, as tests/kafka_go_clients.rs runs it:
// create a topic (CreateTopics v0), produce with acks=all compressed by the codec named on
// the command line (Produce v2), then read with a consumer group that commits (Fetch v2,
// OffsetCommit v2, OffsetFetch v1), stop half way and resume in a second reader.
//
// Usage: kafkago BROKER TOPIC GROUP CODEC(none|snappy|lz4|gzip) MESSAGES
// Prints one line `produced=N first=A second=B distinct=D` and exits 0, or names the
// failure and exits 1.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	kafka "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/gzip"
	"github.com/segmentio/kafka-go/lz4"
	"github.com/segmentio/kafka-go/snappy"
)

func fail(what string, err error) {
	fmt.Printf("FAIL %s: %v\n", what, err)
	os.Exit(1)
}

func codec(name string) kafka.CompressionCodec {
	switch name {
	case "snappy":
		return snappy.NewCompressionCodec()
	case "lz4":
		return lz4.NewCompressionCodec()
	case "gzip":
		return gzip.NewCompressionCodec()
	}
	return nil
}

// read takes up to n messages of the group, committing each, and records their keys.
func read(broker, topic, group string, n int, seen map[string]int) int {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:  []string{broker},
		GroupID:  group,
		Topic:    topic,
		MinBytes: 1,
		MaxBytes: 1 << 20,
		MaxWait:  200 * time.Millisecond,
		// kafka-go 0.2 closes a reader without LeaveGroup: the next reader's join waits,
		// as it would on Kafka, until this member's session expires.
		SessionTimeout:    2 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
	})
	defer r.Close()
	got := 0
	for got < n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		m, err := r.FetchMessage(ctx)
		cancel()
		if err != nil {
			break
		}
		seen[string(m.Key)]++
		if err := r.CommitMessages(context.Background(), m); err != nil {
			fail("commit", err)
		}
		got++
	}
	return got
}

func main() {
	if len(os.Args) != 6 {
		fmt.Println("usage: kafkago BROKER TOPIC GROUP CODEC MESSAGES")
		os.Exit(2)
	}
	broker, topic, group := os.Args[1], os.Args[2], os.Args[3]
	n, err := strconv.Atoi(os.Args[5])
	if err != nil {
		fail("message count", err)
	}

	conn, err := kafka.Dial("tcp", broker)
	if err != nil {
		fail("dial", err)
	}
	err = conn.CreateTopics(kafka.TopicConfig{Topic: topic, NumPartitions: 3, ReplicationFactor: 1})
	conn.Close()
	if err != nil {
		fail("create topic", err)
	}

	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:          []string{broker},
		Topic:            topic,
		Balancer:         &kafka.Hash{},
		RequiredAcks:     -1,
		BatchSize:        50,
		BatchTimeout:     10 * time.Millisecond,
		CompressionCodec: codec(os.Args[4]),
	})
	msgs := make([]kafka.Message, 0, n)
	for i := 0; i < n; i++ {
		msgs = append(msgs, kafka.Message{
			Key:   []byte(fmt.Sprintf("key-%d", i)),
			Value: []byte(fmt.Sprintf("value-%d", i)),
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	err = w.WriteMessages(ctx, msgs...)
	cancel()
	w.Close()
	if err != nil {
		fail("produce", err)
	}

	seen := map[string]int{}
	first := read(broker, topic, group, n/2, seen)
	second := read(broker, topic, group, n-first, seen)
	for i := 0; i < n; i++ {
		if seen[fmt.Sprintf("key-%d", i)] == 0 {
			fmt.Printf("FAIL key-%d never read (first=%d second=%d)\n", i, first, second)
			os.Exit(1)
		}
	}
	fmt.Printf("produced=%d first=%d second=%d distinct=%d\n", n, first, second, len(seen))
}
