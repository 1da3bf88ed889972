// Sarama (Debian's golang-github-shopify-sarama-dev) against Portask. Sarama of this age
// negotiates nothing: config.Version picks the request versions, and with V2_1_0_0 it
// sends old ones (Produce v3, Fetch v4, Metadata v5, OffsetCommit v2, OffsetFetch v1,
// JoinGroup v1, ListOffsets v1, CreateTopics v2, DeleteTopics v1, InitProducerId v0).
//
// Usage: go-sarama BOOTSTRAP [KAFKA_VERSION]
// KAFKA_VERSION (default 2.1.0) is Sarama's config.Version; 0.11.0.0 makes it send
// Metadata v1 as well. Topics are always created with a config of at least 1.0.0, as
// CreateTopics v1 is one of the versions Kafka 4 removed (KIP-896).
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

var (
	version   = sarama.V2_1_0_0
	label     = "sarama"
	bootstrap []string
	failed    int
	topic     = fmt.Sprintf("sa-%d", time.Now().UnixNano()%1e9)
	produced  []string // "key:value" of every record on `topic`
	mu        sync.Mutex
)

type skip string

func run(name string, fn func() (string, error)) {
	start := time.Now()
	note, err := fn()
	took := time.Since(start).Seconds()
	switch e := err.(type) {
	case nil:
		if note != "" {
			note = " (" + note + ")"
		}
		fmt.Printf("PASS %s %s [%.1fs]%s\n", label, name, took, note)
	case skip:
		fmt.Printf("SKIP %s %s: %s\n", label, name, string(e))
	default:
		failed++
		fmt.Printf("FAIL %s %s: %v\n", label, name, err)
	}
}

func (s skip) Error() string { return string(s) }

func config() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = version
	c.ClientID = "compat-sarama"
	c.Net.DialTimeout = 10 * time.Second
	c.Metadata.Retry.Backoff = 200 * time.Millisecond
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewHashPartitioner
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	// With a retention time Sarama commits with OffsetCommit v2; without one it uses v1,
	// which Kafka 4 no longer accepts (KIP-896).
	c.Consumer.Offsets.Retention = 24 * time.Hour
	return c
}

func waitFor(timeout time.Duration, what string, pred func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if pred() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
}

func produce(codec sarama.CompressionCodec, n int, label string, headers bool, idempotent bool) (string, error) {
	c := config()
	c.Producer.Compression = codec
	if idempotent {
		c.Producer.Idempotent = true
		c.Net.MaxOpenRequests = 1
	}
	p, err := sarama.NewSyncProducer(bootstrap, c)
	if err != nil {
		return "", err
	}
	defer p.Close()
	var msgs []*sarama.ProducerMessage
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("key-%d", i%4)
		value := fmt.Sprintf("%s-%d-%s", label, i, strings.Repeat("s", 200))
		m := &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key), Value: sarama.StringEncoder(value)}
		if headers {
			m.Headers = []sarama.RecordHeader{{Key: []byte("trace"), Value: []byte(fmt.Sprintf("t%d", i))}}
		}
		msgs = append(msgs, m)
	}
	if err := p.SendMessages(msgs); err != nil {
		return "", err
	}
	parts := map[string]map[int32]bool{}
	for _, m := range msgs {
		k := string(m.Key.(sarama.StringEncoder))
		if parts[k] == nil {
			parts[k] = map[int32]bool{}
		}
		parts[k][m.Partition] = true
		produced = append(produced, k+":"+string(m.Value.(sarama.StringEncoder)))
	}
	for k, ps := range parts {
		if len(ps) != 1 {
			return "", fmt.Errorf("key %s on partitions %v", k, ps)
		}
	}
	return fmt.Sprintf("%d records", n), nil
}

// consumeAll reads both partitions from the beginning with the plain consumer.
func consumeAll(want int) ([]*sarama.ConsumerMessage, error) {
	c, err := sarama.NewConsumer(bootstrap, config())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	out := make(chan *sarama.ConsumerMessage, 1000)
	for _, p := range []int32{0, 1} {
		pc, err := c.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, err
		}
		defer pc.Close()
		go func() {
			for m := range pc.Messages() {
				out <- m
			}
		}()
	}
	var got []*sarama.ConsumerMessage
	timeout := time.After(20 * time.Second)
	for len(got) < want {
		select {
		case m := <-out:
			got = append(got, m)
		case <-timeout:
			return got, fmt.Errorf("consumed %d of %d", len(got), want)
		}
	}
	return got, nil
}

type member struct {
	name     string
	group    sarama.ConsumerGroup
	cancel   context.CancelFunc
	done     chan struct{}
	assigned []int32
	seen     int
	err      error
}

func (m *member) Setup(s sarama.ConsumerGroupSession) error {
	mu.Lock()
	m.assigned = append([]int32(nil), s.Claims()[topic]...)
	sort.Slice(m.assigned, func(i, j int) bool { return m.assigned[i] < m.assigned[j] })
	mu.Unlock()
	return nil
}

func (m *member) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		mu.Lock()
		m.seen++
		mu.Unlock()
		s.MarkMessage(msg, "")
	}
	return nil
}

func startMember(name, groupID string) (*member, error) {
	c := config()
	c.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	g, err := sarama.NewConsumerGroup(bootstrap, groupID, c)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{name: name, group: g, cancel: cancel, done: make(chan struct{})}
	go func() {
		for e := range g.Errors() {
			mu.Lock()
			m.err = e
			mu.Unlock()
		}
	}()
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, m); err != nil {
				mu.Lock()
				m.err = err
				mu.Unlock()
				return
			}
		}
	}()
	return m, nil
}

func (m *member) stop() error {
	m.cancel()
	<-m.done
	return m.group.Close()
}

func snapshot(m *member) ([]int32, int, error) {
	mu.Lock()
	defer mu.Unlock()
	return append([]int32(nil), m.assigned...), m.seen, m.err
}

// topicExists asks for the whole cluster's metadata (Metadata v5). ClusterAdmin.ListTopics
// is not used: this Sarama follows it with DescribeConfigs v0, which Kafka 4 no longer
// accepts (KIP-896), and the broker closes the connection as Kafka does.
func topicExists() bool {
	client, err := sarama.NewClient(bootstrap, config())
	if err != nil {
		return false
	}
	defer client.Close()
	topics, err := client.Topics()
	if err != nil {
		return false
	}
	for _, t := range topics {
		if t == topic {
			return true
		}
	}
	return false
}

func main() {
	bootstrap = []string{os.Args[1]}
	if len(os.Args) > 2 {
		v, err := sarama.ParseKafkaVersion(os.Args[2])
		if err != nil {
			fmt.Printf("FAIL sarama setup: %v\n", err)
			os.Exit(1)
		}
		version = v
		label = "sarama@" + os.Args[2]
	}
	adminConfig := config()
	if !version.IsAtLeast(sarama.V1_0_0_0) {
		adminConfig.Version = sarama.V1_0_0_0
	}
	admin, err := sarama.NewClusterAdmin(bootstrap, adminConfig)
	if err != nil {
		fmt.Printf("FAIL %s setup: %v\n", label, err)
		os.Exit(1)
	}

	run("create_topic", func() (string, error) {
		if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
			return "", err
		}
		return "", waitFor(10*time.Second, "topic in metadata", func() bool { return topicExists() })
	})
	run("produce_keyed_acks_all", func() (string, error) { return produce(sarama.CompressionNone, 20, "none", false, false) })
	for _, c := range []struct {
		name  string
		codec sarama.CompressionCodec
	}{{"gzip", sarama.CompressionGZIP}, {"snappy", sarama.CompressionSnappy}, {"lz4", sarama.CompressionLZ4}} {
		c := c
		run("compression_"+c.name, func() (string, error) { return produce(c.codec, 20, c.name, false, false) })
	}
	run("compression_zstd", func() (string, error) {
		// This Sarama sends zstd inside Produce v3; Kafka answers such a request with
		// UNSUPPORTED_COMPRESSION_TYPE (zstd needs Produce v7), and so must we.
		_, err := produce(sarama.CompressionZSTD, 5, "zstd", false, false)
		if err == nil {
			produced = produced[:len(produced)-5]
			return "", fmt.Errorf("zstd in Produce v3 was accepted")
		}
		perrs, ok := err.(sarama.ProducerErrors)
		if !ok || len(perrs) == 0 || perrs[0].Err != sarama.ErrUnsupportedCompressionType {
			return "", fmt.Errorf("want UNSUPPORTED_COMPRESSION_TYPE, got %v (%v)", err, perrs)
		}
		return "rejected as Kafka does: zstd needs Produce v7", nil
	})
	run("headers", func() (string, error) {
		if _, err := produce(sarama.CompressionNone, 5, "hdr", true, false); err != nil {
			return "", err
		}
		got, err := consumeAll(len(produced))
		if err != nil {
			return "", err
		}
		n := 0
		for _, m := range got {
			if strings.HasPrefix(string(m.Value), "hdr-") {
				if len(m.Headers) != 1 || string(m.Headers[0].Key) != "trace" || !strings.HasPrefix(string(m.Headers[0].Value), "t") {
					return "", fmt.Errorf("headers %v", m.Headers)
				}
				n++
			}
		}
		if n != 5 {
			return "", fmt.Errorf("%d records with headers", n)
		}
		return "", nil
	})
	run("idempotent_producer", func() (string, error) { return produce(sarama.CompressionNone, 50, "idem", false, true) })
	run("consume_from_beginning", func() (string, error) {
		got, err := consumeAll(len(produced))
		if err != nil {
			return "", err
		}
		var kv []string
		for _, m := range got {
			kv = append(kv, string(m.Key)+":"+string(m.Value))
		}
		want := append([]string(nil), produced...)
		sort.Strings(kv)
		sort.Strings(want)
		if strings.Join(kv, ",") != strings.Join(want, ",") {
			return "", fmt.Errorf("consumed records differ")
		}
		return fmt.Sprintf("%d records", len(got)), nil
	})

	groupID := topic + "-group"
	var a, b *member
	run("group_two_members_commit", func() (string, error) {
		var err error
		if a, err = startMember("a", groupID); err != nil {
			return "", err
		}
		if b, err = startMember("b", groupID); err != nil {
			return "", err
		}
		if err := waitFor(30*time.Second, "one partition each", func() bool {
			pa, _, _ := snapshot(a)
			pb, _, _ := snapshot(b)
			return len(pa) == 1 && len(pb) == 1 && pa[0] != pb[0]
		}); err != nil {
			_, _, ea := snapshot(a)
			_, _, eb := snapshot(b)
			return "", fmt.Errorf("%v (errors: a=%v b=%v)", err, ea, eb)
		}
		if err := waitFor(30*time.Second, "everything consumed", func() bool {
			_, sa, _ := snapshot(a)
			_, sb, _ := snapshot(b)
			return sa+sb >= len(produced)
		}); err != nil {
			return "", err
		}
		var committed int64
		err = waitFor(15*time.Second, "commits", func() bool {
			r, err := admin.ListConsumerGroupOffsets(groupID, map[string][]int32{topic: {0, 1}})
			if err != nil {
				return false
			}
			committed = 0
			for _, p := range []int32{0, 1} {
				if blk := r.GetBlock(topic, p); blk != nil && blk.Offset > 0 {
					committed += blk.Offset
				}
			}
			return committed >= int64(len(produced))
		})
		pa, _, _ := snapshot(a)
		pb, _, _ := snapshot(b)
		return fmt.Sprintf("a=%v b=%v committed %d", pa, pb, committed), err
	})
	run("rebalance_on_leave", func() (string, error) {
		if b == nil {
			return "", fmt.Errorf("no second member")
		}
		if err := b.stop(); err != nil {
			return "", err
		}
		return "", waitFor(30*time.Second, "the remaining member owns both partitions", func() bool {
			pa, _, _ := snapshot(a)
			return len(pa) == 2
		})
	})
	run("list_describe_groups", func() (string, error) {
		groups, err := admin.ListConsumerGroups()
		if err != nil {
			return "", err
		}
		if _, ok := groups[groupID]; !ok {
			return "", fmt.Errorf("group not listed: %v", groups)
		}
		ds, err := admin.DescribeConsumerGroups([]string{groupID})
		if err != nil {
			return "", err
		}
		if len(ds) != 1 || ds[0].State != "Stable" || len(ds[0].Members) != 1 {
			return "", fmt.Errorf("described %+v", ds[0])
		}
		if a != nil {
			return "", a.stop()
		}
		return "", nil
	})
	run("list_offsets", func() (string, error) {
		client, err := sarama.NewClient(bootstrap, config())
		if err != nil {
			return "", err
		}
		defer client.Close()
		var total int64
		for _, p := range []int32{0, 1} {
			oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
			if err != nil {
				return "", err
			}
			newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return "", err
			}
			byTime, err := client.GetOffset(topic, p, 1)
			if err != nil {
				return "", err
			}
			future, err := client.GetOffset(topic, p, time.Now().Add(time.Hour).UnixNano()/1e6)
			if err != nil {
				return "", err
			}
			if oldest != 0 || byTime != 0 || future != -1 {
				return "", fmt.Errorf("partition %d: oldest %d by-time %d future %d", p, oldest, byTime, future)
			}
			total += newest
		}
		if total != int64(len(produced)) {
			return "", fmt.Errorf("latest offsets sum to %d for %d records", total, len(produced))
		}
		return "", nil
	})
	run("delete_topic", func() (string, error) {
		if err := admin.DeleteTopic(topic); err != nil {
			return "", err
		}
		return "", waitFor(10*time.Second, "topic gone from metadata", func() bool { return !topicExists() })
	})
	admin.Close()
	if failed > 0 {
		os.Exit(1)
	}
}
