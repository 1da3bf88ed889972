// amqp091-go (Debian's golang-github-rabbitmq-amqp091-go-dev) against Portask's AMQP 0-9-1.
//
// Usage: go-amqp091 AMQP_URL
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	url    string
	failed int
	conn   *amqp.Connection
	ch     *amqp.Channel
	stamp  = time.Now().UnixNano() % 1e9
	ex     = fmt.Sprintf("ga-ex-%d", stamp)
	q      = fmt.Sprintf("ga-q-%d", stamp)
)

type skip string

func (s skip) Error() string { return string(s) }

func run(name string, fn func() error) {
	start := time.Now()
	err := fn()
	var sk skip
	switch {
	case err == nil:
		fmt.Printf("PASS amqp091-go %s [%.1fs]\n", name, time.Since(start).Seconds())
	case errors.As(err, &sk):
		fmt.Printf("SKIP amqp091-go %s: %s\n", name, sk)
	default:
		failed++
		fmt.Printf("FAIL amqp091-go %s: %v\n", name, err)
	}
}

func waitFor(timeout time.Duration, what string, pred func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if pred() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
}

func publish(c *amqp.Channel, key string, body string, p amqp.Publishing) error {
	p.Body = []byte(body)
	return c.Publish(ex, key, false, false, p)
}

// get waits for one message on `queue`.
func get(c *amqp.Channel, queue string, autoAck bool) (amqp.Delivery, error) {
	var d amqp.Delivery
	var err error
	werr := waitFor(5*time.Second, "a message on "+queue, func() bool {
		var ok bool
		d, ok, err = c.Get(queue, autoAck)
		return err != nil || ok
	})
	if err != nil {
		return d, err
	}
	return d, werr
}

func count(queue string) (int, error) {
	qi, err := ch.QueueInspect(queue)
	return qi.Messages, err
}

func expectCount(queue string, want int) error {
	n, err := count(queue)
	if err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("%d messages on %s, want %d", n, queue, want)
	}
	return nil
}

func main() {
	url = os.Args[1]
	var err error
	if conn, err = amqp.Dial(url); err != nil {
		fmt.Printf("FAIL amqp091-go setup: %v\n", err)
		os.Exit(1)
	}
	if ch, err = conn.Channel(); err != nil {
		fmt.Printf("FAIL amqp091-go setup: %v\n", err)
		os.Exit(1)
	}

	run("declare_bind", func() error {
		if err := ch.ExchangeDeclare(ex, "direct", false, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			return err
		}
		if err := ch.QueueBind(q, "rk", ex, false, nil); err != nil {
			return err
		}
		anon, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(anon.Name, "amq.gen-") {
			return fmt.Errorf("server-named queue %q", anon.Name)
		}
		return nil
	})
	run("publish_properties_headers", func() error {
		headers := amqp.Table{"str": "v", "int": int32(42), "big": int64(1) << 40, "bool": true,
			"float": 1.5, "list": []interface{}{int32(1), "two"}, "table": amqp.Table{"inner": "x"}}
		p := amqp.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Headers: headers,
			DeliveryMode: 2, Priority: 3, CorrelationId: "corr-1", ReplyTo: "replies", Expiration: "60000",
			MessageId: "msg-1", Timestamp: time.Unix(1700000000, 0), Type: "order", UserId: "guest", AppId: "compat"}
		if err := publish(ch, "rk", `{"a":1}`, p); err != nil {
			return err
		}
		d, err := get(ch, q, true)
		if err != nil {
			return err
		}
		got := fmt.Sprintf("%s|%s|%d|%d|%s|%s|%s|%s|%d|%s|%s|%s|%s", d.ContentType, d.ContentEncoding, d.DeliveryMode,
			d.Priority, d.CorrelationId, d.ReplyTo, d.Expiration, d.MessageId, d.Timestamp.Unix(), d.Type, d.UserId, d.AppId, d.Body)
		want := fmt.Sprintf("%s|%s|%d|%d|%s|%s|%s|%s|%d|%s|%s|%s|%s", p.ContentType, p.ContentEncoding, p.DeliveryMode,
			p.Priority, p.CorrelationId, p.ReplyTo, p.Expiration, p.MessageId, p.Timestamp.Unix(), p.Type, p.UserId, p.AppId, `{"a":1}`)
		if got != want {
			return fmt.Errorf("properties %s, want %s", got, want)
		}
		if fmt.Sprint(d.Headers) != fmt.Sprint(headers) {
			return fmt.Errorf("headers %v, want %v", d.Headers, headers)
		}
		return nil
	})
	run("consume_ack", func() error {
		ds, err := ch.Consume(q, "ga-consumer", false, false, false, false, nil)
		if err != nil {
			return err
		}
		for i := 0; i < 10; i++ {
			if err := publish(ch, "rk", fmt.Sprintf("m%d", i), amqp.Publishing{}); err != nil {
				return err
			}
		}
		for i := 0; i < 10; i++ {
			select {
			case d := <-ds:
				if string(d.Body) != fmt.Sprintf("m%d", i) {
					return fmt.Errorf("delivery %d is %q", i, d.Body)
				}
				if err := d.Ack(false); err != nil {
					return err
				}
			case <-time.After(10 * time.Second):
				return fmt.Errorf("only %d deliveries", i)
			}
		}
		if err := ch.Cancel("ga-consumer", false); err != nil {
			return err
		}
		return expectCount(q, 0)
	})
	run("basic_get", func() error {
		if _, ok, err := ch.Get(q, false); err != nil || ok {
			return fmt.Errorf("get on an empty queue: ok=%v err=%v", ok, err)
		}
		if err := publish(ch, "rk", "g1", amqp.Publishing{}); err != nil {
			return err
		}
		d, err := get(ch, q, false)
		if err != nil {
			return err
		}
		if string(d.Body) != "g1" || d.MessageCount != 0 {
			return fmt.Errorf("get-ok body %q count %d", d.Body, d.MessageCount)
		}
		return d.Ack(false)
	})
	run("confirms", func() error {
		c, err := conn.Channel()
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Confirm(false); err != nil {
			return err
		}
		confirms := c.NotifyPublish(make(chan amqp.Confirmation, 100))
		returns := c.NotifyReturn(make(chan amqp.Return, 1))
		for i := 0; i < 20; i++ {
			if err := publish(c, "rk", fmt.Sprintf("c%d", i), amqp.Publishing{DeliveryMode: 2}); err != nil {
				return err
			}
		}
		if err := c.Publish(ex, "nowhere", true, false, amqp.Publishing{Body: []byte("x")}); err != nil {
			return err
		}
		for i := 1; i <= 21; i++ {
			select {
			case cf := <-confirms:
				if !cf.Ack || cf.DeliveryTag != uint64(i) {
					return fmt.Errorf("confirm %d: %+v", i, cf)
				}
			case <-time.After(10 * time.Second):
				return fmt.Errorf("confirm %d missing", i)
			}
		}
		select {
		case r := <-returns:
			if r.ReplyCode != 312 {
				return fmt.Errorf("return code %d", r.ReplyCode)
			}
		case <-time.After(5 * time.Second):
			return fmt.Errorf("mandatory message not returned")
		}
		_, err = ch.QueuePurge(q, false)
		return err
	})
	run("prefetch", func() error {
		c, err := conn.Channel()
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Qos(2, 0, false); err != nil {
			return err
		}
		ds, err := c.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		for i := 0; i < 5; i++ {
			if err := publish(c, "rk", fmt.Sprintf("p%d", i), amqp.Publishing{}); err != nil {
				return err
			}
		}
		var got []amqp.Delivery
		collect := func(d time.Duration) {
			t := time.After(d)
			for {
				select {
				case m := <-ds:
					got = append(got, m)
				case <-t:
					return
				}
			}
		}
		collect(time.Second)
		if len(got) != 2 {
			return fmt.Errorf("%d unacked deliveries with prefetch 2", len(got))
		}
		got[0].Ack(false)
		collect(time.Second)
		if len(got) != 3 {
			return fmt.Errorf("%d deliveries after one ack", len(got))
		}
		got[2].Ack(true)
		collect(time.Second)
		if len(got) != 5 {
			return fmt.Errorf("%d deliveries after acking all", len(got))
		}
		return got[4].Ack(true)
	})
	run("nack_requeue", func() error {
		if err := publish(ch, "rk", "n1", amqp.Publishing{}); err != nil {
			return err
		}
		d, err := get(ch, q, false)
		if err != nil {
			return err
		}
		if d.Redelivered {
			return fmt.Errorf("fresh message marked redelivered")
		}
		d.Nack(false, true)
		d2, err := get(ch, q, false)
		if err != nil {
			return err
		}
		if !d2.Redelivered {
			return fmt.Errorf("requeued message not redelivered")
		}
		d2.Nack(false, false)
		return expectCount(q, 0)
	})
	run("reject", func() error {
		if err := publish(ch, "rk", "r1", amqp.Publishing{}); err != nil {
			return err
		}
		d, err := get(ch, q, false)
		if err != nil {
			return err
		}
		d.Reject(false)
		return expectCount(q, 0)
	})
	run("tx", func() error {
		c, err := conn.Channel()
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Tx(); err != nil {
			return err
		}
		publish(c, "rk", "rolled-back", amqp.Publishing{})
		if err := c.TxRollback(); err != nil {
			return err
		}
		if err := expectCount(q, 0); err != nil {
			return err
		}
		publish(c, "rk", "committed", amqp.Publishing{})
		if err := c.TxCommit(); err != nil {
			return err
		}
		d, err := get(c, q, false)
		if err != nil {
			return err
		}
		if string(d.Body) != "committed" {
			return fmt.Errorf("got %q", d.Body)
		}
		d.Ack(false)
		return c.TxCommit()
	})
	run("exclusive_queue", func() error {
		anon, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return err
		}
		other, err := amqp.Dial(url)
		if err != nil {
			return err
		}
		defer other.Close()
		oc, err := other.Channel()
		if err != nil {
			return err
		}
		_, err = oc.QueueDeclarePassive(anon.Name, false, true, true, false, nil)
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != 405 {
			return fmt.Errorf("want 405 RESOURCE_LOCKED, got %v", err)
		}
		return nil
	})
	run("ttl_dead_letter", func() error {
		dlx, dlq, src := ex+"-dlx", q+"-dlq", q+"-ttl"
		if err := ch.ExchangeDeclare(dlx, "fanout", false, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(dlq, false, false, false, false, nil); err != nil {
			return err
		}
		if err := ch.QueueBind(dlq, "", dlx, false, nil); err != nil {
			return err
		}
		args := amqp.Table{"x-message-ttl": int32(200), "x-dead-letter-exchange": dlx}
		if _, err := ch.QueueDeclare(src, false, false, false, false, args); err != nil {
			return err
		}
		if err := ch.Publish("", src, false, false, amqp.Publishing{Body: []byte("expires")}); err != nil {
			return err
		}
		var d amqp.Delivery
		if err := waitFor(10*time.Second, "dead-lettered message", func() bool {
			var ok bool
			d, ok, _ = ch.Get(dlq, true)
			return ok
		}); err != nil {
			return err
		}
		deaths, _ := d.Headers["x-death"].([]interface{})
		if len(deaths) == 0 {
			return fmt.Errorf("no x-death header: %v", d.Headers)
		}
		if death, _ := deaths[0].(amqp.Table); death["reason"] != "expired" {
			return fmt.Errorf("x-death %v", deaths[0])
		}
		ch.QueueDelete(src, false, false, false)
		ch.QueueDelete(dlq, false, false, false)
		return ch.ExchangeDelete(dlx, false, false)
	})
	run("blocked_capability", func() error {
		caps, _ := conn.Properties["capabilities"].(amqp.Table)
		if caps["connection.blocked"] != true || caps["consumer_cancel_notify"] != true {
			return fmt.Errorf("server capabilities %v", caps)
		}
		conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		return nil
	})
	run("heartbeat_idle", func() error {
		c, err := amqp.DialConfig(url, amqp.Config{Heartbeat: time.Second})
		if err != nil {
			return err
		}
		defer c.Close()
		if c.Config.Heartbeat != time.Second {
			return fmt.Errorf("negotiated heartbeat %s", c.Config.Heartbeat)
		}
		closed := c.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case e := <-closed:
			return fmt.Errorf("connection closed while idle: %v", e)
		case <-time.After(3500 * time.Millisecond):
		}
		cc, err := c.Channel()
		if err != nil {
			return err
		}
		_, err = cc.QueueInspect(q)
		return err
	})
	run("close_clean", func() error {
		c, err := amqp.Dial(url)
		if err != nil {
			return err
		}
		c1, err := c.Channel()
		if err != nil {
			return err
		}
		if err := c1.Close(); err != nil {
			return err
		}
		c2, err := c.Channel()
		if err != nil {
			return err
		}
		if _, err := c2.QueueInspect(q); err != nil {
			return err
		}
		if err := c.Close(); err != nil {
			return err
		}
		if !c.IsClosed() {
			return fmt.Errorf("connection not closed")
		}
		return nil
	})
	run("consumer_cancel_notify", func() error {
		tmp := q + "-cancel"
		c, err := conn.Channel()
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.QueueDeclare(tmp, false, false, false, false, nil); err != nil {
			return err
		}
		cancels := c.NotifyCancel(make(chan string, 1))
		if _, err := c.Consume(tmp, "ga-cancel", false, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDelete(tmp, false, false, false); err != nil {
			return err
		}
		select {
		case tag := <-cancels:
			if tag != "ga-cancel" {
				return fmt.Errorf("cancelled tag %q", tag)
			}
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no basic.cancel from the broker")
		}
		return nil
	})
	run("large_message", func() error {
		body := append(make([]byte, 1<<20), []byte("end")...)
		for i := range body[:1<<20] {
			body[i] = byte(i)
		}
		if err := ch.Publish(ex, "rk", false, false, amqp.Publishing{Body: body}); err != nil {
			return err
		}
		d, err := get(ch, q, true)
		if err != nil {
			return err
		}
		if string(d.Body) != string(body) {
			return fmt.Errorf("%d bytes back of %d", len(d.Body), len(body))
		}
		return nil
	})
	run("channel_error_recovery", func() error {
		c, err := conn.Channel()
		if err != nil {
			return err
		}
		_, err = c.QueueDeclarePassive(q+"-missing", false, false, false, false, nil)
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != 404 {
			return fmt.Errorf("want 404 NOT_FOUND, got %v", err)
		}
		c2, err := conn.Channel()
		if err != nil {
			return err
		}
		defer c2.Close()
		_, err = c2.QueueInspect(q)
		return err
	})
	run("direct_reply_to", func() error {
		rq := q + "-rpc"
		srv, err := conn.Channel()
		if err != nil {
			return err
		}
		defer srv.Close()
		if _, err := srv.QueueDeclare(rq, false, true, false, false, nil); err != nil {
			return err
		}
		reqs, err := srv.Consume(rq, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		go func() {
			for d := range reqs {
				srv.Publish("", d.ReplyTo, false, false, amqp.Publishing{
					CorrelationId: d.CorrelationId, Body: []byte(strings.ToUpper(string(d.Body)))})
				d.Ack(false)
			}
		}()
		cl, err := conn.Channel()
		if err != nil {
			return err
		}
		defer cl.Close()
		replies, err := cl.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
		if err != nil {
			return err
		}
		for i := 0; i < 3; i++ {
			err := cl.Publish("", rq, false, false, amqp.Publishing{
				ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: fmt.Sprintf("r%d", i),
				Body: []byte(fmt.Sprintf("ping%d", i))})
			if err != nil {
				return err
			}
			select {
			case d := <-replies:
				want := fmt.Sprintf("r%d:PING%d", i, i)
				if got := d.CorrelationId + ":" + string(d.Body); got != want {
					return fmt.Errorf("reply %q, want %q", got, want)
				}
			case <-time.After(5 * time.Second):
				return fmt.Errorf("no direct reply %d", i)
			}
		}
		return nil
	})
	run("quorum_queue", func() error {
		qq := q + "-qq"
		args := amqp.Table{"x-queue-type": "quorum"}
		if _, err := ch.QueueDeclare(qq, true, false, false, false, args); err != nil {
			return err
		}
		defer ch.QueueDelete(qq, false, false, false)
		if err := ch.Publish("", qq, false, false, amqp.Publishing{Body: []byte("q1")}); err != nil {
			return err
		}
		d, err := get(ch, qq, false)
		if err != nil {
			return err
		}
		if err := d.Nack(false, true); err != nil {
			return err
		}
		again, err := get(ch, qq, true)
		if err != nil {
			return err
		}
		if !again.Redelivered || fmt.Sprint(again.Headers["x-delivery-count"]) != "1" {
			return fmt.Errorf("redelivery %v headers %v", again.Redelivered, again.Headers)
		}
		return nil
	})
	ch.QueueDelete(q, false, false, false)
	ch.ExchangeDelete(ex, false, false)
	if err := conn.Close(); err != nil {
		fmt.Printf("FAIL amqp091-go close: %v\n", err)
		failed++
	}
	if failed > 0 {
		os.Exit(1)
	}
}
