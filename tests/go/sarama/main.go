// A user of Debian's sarama (1.22) against Portask, as tests/kafka_go_clients.rs runs it,
// speaking the protocol versions of the Kafka version named on the command line (0.8.2
// sends Produce v0, Fetch v0, ListOffsets v0, Metadata v0, OffsetCommit v1 and OffsetFetch
// v1): produce with acks=all and the named codec, read the first half of every partition
// and commit it through an offset manager, then read the rest from the committed offsets in
// a second client.
//
// Usage: sarama BROKER TOPIC GROUP KAFKA_VERSION CODEC(none|snappy|lz4|gzip) MESSAGES
// Prints one line `produced=N first=A second=B distinct=D` and exits 0, or names the
// failure and exits 1.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/Shopify/sarama"
)

func fail(what string, err error) {
	fmt.Printf("FAIL %s: %v\n", what, err)
	os.Exit(1)
}

func config(version string, codec string) *sarama.Config {
	c := sarama.NewConfig()
	v, err := sarama.ParseKafkaVersion(version)
	if err != nil {
		fail("kafka version", err)
	}
	c.Version = v
	c.ClientID = "sarama-old-versions"
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewHashPartitioner
	switch codec {
	case "snappy":
		c.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		c.Producer.Compression = sarama.CompressionLZ4
	case "gzip":
		c.Producer.Compression = sarama.CompressionGZIP
	}
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	return c
}

// consume reads each partition from the group's committed offset (or the oldest) up to
// `upTo[p]` (exclusive), marks what it read, and closes the offset manager so the
// commits are flushed. Returns how many messages it read.
func consume(broker, topic, group string, conf *sarama.Config, upTo map[int32]int64,
	seen map[string]int, wantStart map[int32]int64) int {
	client, err := sarama.NewClient([]string{broker}, conf)
	if err != nil {
		fail("client", err)
	}
	defer client.Close()
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		fail("offset manager", err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		fail("consumer", err)
	}
	read := 0
	for p, end := range upTo {
		pom, err := om.ManagePartition(topic, p)
		if err != nil {
			fail("manage partition", err)
		}
		start, _ := pom.NextOffset()
		// Nothing committed yet reads as the configured initial offset (negative).
		if want, ok := wantStart[p]; ok && start != want && !(want == 0 && start < 0) {
			fmt.Printf("FAIL partition %d resumes at %d, committed %d\n", p, start, want)
			os.Exit(1)
		}
		if start < 0 {
			start = 0 // every partition starts at 0 (checked above)
		}
		if start >= end {
			pom.Close()
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, start)
		if err != nil {
			fail("consume partition", err)
		}
		for done := false; !done; {
			select {
			case m := <-pc.Messages():
				seen[string(m.Key)]++
				read++
				pom.MarkOffset(m.Offset+1, "")
				done = m.Offset+1 >= end
			case e := <-pc.Errors():
				fail("fetch", e)
			case <-time.After(20 * time.Second):
				fmt.Printf("FAIL partition %d: nothing more after %d messages\n", p, read)
				os.Exit(1)
			}
		}
		pc.Close()
		if err := pom.Close(); err != nil {
			fail("commit", err)
		}
	}
	consumer.Close()
	if err := om.Close(); err != nil {
		fail("offset manager close", err)
	}
	return read
}

func main() {
	if len(os.Args) != 7 {
		fmt.Println("usage: sarama BROKER TOPIC GROUP KAFKA_VERSION CODEC MESSAGES")
		os.Exit(2)
	}
	broker, topic, group := os.Args[1], os.Args[2], os.Args[3]
	conf := config(os.Args[4], os.Args[5])
	n, err := strconv.Atoi(os.Args[6])
	if err != nil {
		fail("message count", err)
	}

	producer, err := sarama.NewSyncProducer([]string{broker}, conf)
	if err != nil {
		fail("producer", err)
	}
	msgs := make([]*sarama.ProducerMessage, 0, n)
	for i := 0; i < n; i++ {
		msgs = append(msgs, &sarama.ProducerMessage{
			Topic: topic,
			Key:   sarama.StringEncoder(fmt.Sprintf("key-%d", i)),
			Value: sarama.StringEncoder(fmt.Sprintf("value-%d", i)),
		})
	}
	if err := producer.SendMessages(msgs); err != nil {
		fail("produce", err)
	}
	producer.Close()

	// The partitions' ends (ListOffsets as the version sends it).
	client, err := sarama.NewClient([]string{broker}, conf)
	if err != nil {
		fail("client", err)
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		fail("partitions", err)
	}
	half, end := map[int32]int64{}, map[int32]int64{}
	total := int64(0)
	for _, p := range partitions {
		hw, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			fail("newest offset", err)
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			fail("oldest offset", err)
		}
		if oldest != 0 {
			fmt.Printf("FAIL partition %d starts at %d\n", p, oldest)
			os.Exit(1)
		}
		end[p], half[p] = hw, hw/2
		total += hw
	}
	client.Close()
	if total != int64(n) {
		fmt.Printf("FAIL partitions hold %d messages, produced %d\n", total, n)
		os.Exit(1)
	}

	seen := map[string]int{}
	first := consume(broker, topic, group, conf, half, seen, map[int32]int64{})
	second := consume(broker, topic, group, conf, end, seen, half)
	for i := 0; i < n; i++ {
		if seen[fmt.Sprintf("key-%d", i)] != 1 {
			fmt.Printf("FAIL key-%d read %d times\n", i, seen[fmt.Sprintf("key-%d", i)])
			os.Exit(1)
		}
	}
	fmt.Printf("produced=%d first=%d second=%d distinct=%d\n", n, first, second, len(seen))
}
