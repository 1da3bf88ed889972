// The RabbitMQ Java client (Debian's librabbitmq-client-java) against Portask's AMQP 0-9-1.
// Run as a single-file program: java -cp amqp-client.jar:slf4j-api.jar JavaAmqp.java AMQP_URL
import com.rabbitmq.client.*;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.BooleanSupplier;

public class JavaAmqp {
    static int failed = 0;
    static String url;
    static Connection conn;
    static Channel ch;
    static final String stamp = Long.toHexString(System.nanoTime());
    static final String ex = "ja-ex-" + stamp, q = "ja-q-" + stamp;

    interface Check { void run() throws Exception; }

    static class Skip extends Exception { Skip(String m) { super(m); } }

    static void run(String name, Check c) {
        long start = System.nanoTime();
        try {
            c.run();
            System.out.printf("PASS java-amqp-client %s [%.1fs]%n", name, (System.nanoTime() - start) / 1e9);
        } catch (Skip s) {
            System.out.printf("SKIP java-amqp-client %s: %s%n", name, s.getMessage());
        } catch (Throwable e) {
            failed++;
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            System.out.printf("FAIL java-amqp-client %s: %s%n", name, cause);
        }
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static void waitFor(long ms, String what, BooleanSupplier pred) throws InterruptedException {
        long deadline = System.currentTimeMillis() + ms;
        while (System.currentTimeMillis() < deadline) {
            if (pred.getAsBoolean()) return;
            Thread.sleep(50);
        }
        throw new AssertionError("timed out after " + ms + " ms waiting for " + what);
    }

    static GetResponse get(Channel c, String queue, boolean autoAck) throws Exception {
        long deadline = System.currentTimeMillis() + 5000;
        while (System.currentTimeMillis() < deadline) {
            GetResponse r = c.basicGet(queue, autoAck);
            if (r != null) return r;
            Thread.sleep(50);
        }
        throw new AssertionError("no message on " + queue);
    }

    static ConnectionFactory factory() throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(url);
        f.setAutomaticRecoveryEnabled(false);
        return f;
    }

    static byte[] b(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    static long count(String queue) throws IOException { return ch.messageCount(queue); }

    public static void main(String[] args) throws Exception {
        url = args[0];
        conn = factory().newConnection("compat-java");
        ch = conn.createChannel();

        run("declare_bind", () -> {
            ch.exchangeDeclare(ex, "direct", false, false, null);
            check(ch.queueDeclare(q, false, false, false, null).getQueue().equals(q), "declare-ok name");
            ch.queueBind(q, ex, "rk");
            String anon = ch.queueDeclare().getQueue();
            check(anon.startsWith("amq.gen-"), "server-named queue " + anon);
        });
        run("publish_properties_headers", () -> {
            Map<String, Object> headers = new HashMap<>();
            headers.put("str", "v");
            headers.put("int", 42);
            headers.put("long", 1L << 40);
            headers.put("bool", true);
            headers.put("list", Arrays.asList(1, "two"));
            headers.put("table", Collections.singletonMap("inner", "x"));
            AMQP.BasicProperties p = new AMQP.BasicProperties.Builder().contentType("application/json")
                .contentEncoding("utf-8").headers(headers).deliveryMode(2).priority(3).correlationId("corr-1")
                .replyTo("replies").expiration("60000").messageId("msg-1").timestamp(new Date(1700000000000L))
                .type("order").userId("guest").appId("compat").build();
            ch.basicPublish(ex, "rk", p, b("{\"a\":1}"));
            GetResponse r = get(ch, q, true);
            AMQP.BasicProperties g = r.getProps();
            check(new String(r.getBody(), StandardCharsets.UTF_8).equals("{\"a\":1}"), "body");
            String got = String.join("|", g.getContentType(), g.getContentEncoding(), "" + g.getDeliveryMode(),
                "" + g.getPriority(), g.getCorrelationId(), g.getReplyTo(), g.getExpiration(), g.getMessageId(),
                "" + g.getTimestamp().getTime(), g.getType(), g.getUserId(), g.getAppId());
            String want = String.join("|", p.getContentType(), p.getContentEncoding(), "" + p.getDeliveryMode(),
                "" + p.getPriority(), p.getCorrelationId(), p.getReplyTo(), p.getExpiration(), p.getMessageId(),
                "" + p.getTimestamp().getTime(), p.getType(), p.getUserId(), p.getAppId());
            check(got.equals(want), "properties " + got + " != " + want);
            Map<String, Object> h = g.getHeaders();
            check(h.get("str").toString().equals("v") && h.get("int").equals(42) && h.get("long").equals(1L << 40)
                && h.get("bool").equals(true) && h.get("list").toString().equals("[1, two]")
                && ((Map<?, ?>) h.get("table")).get("inner").toString().equals("x"), "headers " + h);
        });
        run("consume_ack", () -> {
            BlockingQueue<String> got = new LinkedBlockingQueue<>();
            String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String t, Envelope env, AMQP.BasicProperties p, byte[] body) throws IOException {
                    got.add(new String(body, StandardCharsets.UTF_8));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                }
            });
            for (int i = 0; i < 10; i++) ch.basicPublish(ex, "rk", null, b("m" + i));
            for (int i = 0; i < 10; i++) {
                String m = got.poll(10, TimeUnit.SECONDS);
                check(("m" + i).equals(m), "delivery " + i + " is " + m);
            }
            ch.basicCancel(tag);
            check(count(q) == 0, "messages left after acks");
        });
        run("basic_get", () -> {
            check(ch.basicGet(q, false) == null, "get on empty queue returned a message");
            ch.basicPublish(ex, "rk", null, b("g1"));
            GetResponse r = get(ch, q, false);
            check(new String(r.getBody(), StandardCharsets.UTF_8).equals("g1") && r.getMessageCount() == 0, "get-ok");
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
        });
        run("confirms", () -> {
            Channel c = conn.createChannel();
            c.confirmSelect();
            List<Integer> returned = new CopyOnWriteArrayList<>();
            c.addReturnListener(r -> returned.add(r.getReplyCode()));
            for (int i = 0; i < 20; i++) c.basicPublish(ex, "rk", MessageProperties.PERSISTENT_BASIC, b("c" + i));
            c.basicPublish(ex, "nowhere", true, null, b("x"));
            c.waitForConfirmsOrDie(10000);
            waitFor(5000, "the mandatory return", () -> returned.size() == 1);
            check(returned.get(0) == 312, "return code " + returned.get(0));
            c.close();
            ch.queuePurge(q);
        });
        run("prefetch", () -> {
            Channel c = conn.createChannel();
            c.basicQos(2);
            List<Long> tags = new CopyOnWriteArrayList<>();
            String tag = c.basicConsume(q, false, new DefaultConsumer(c) {
                @Override
                public void handleDelivery(String t, Envelope env, AMQP.BasicProperties p, byte[] body) {
                    tags.add(env.getDeliveryTag());
                }
            });
            for (int i = 0; i < 5; i++) c.basicPublish(ex, "rk", null, b("p" + i));
            Thread.sleep(1000);
            check(tags.size() == 2, tags.size() + " unacked deliveries with prefetch 2");
            c.basicAck(tags.get(0), false);
            Thread.sleep(1000);
            check(tags.size() == 3, tags.size() + " deliveries after one ack");
            c.basicAck(tags.get(2), true);
            waitFor(5000, "the rest", () -> tags.size() == 5);
            c.basicAck(tags.get(4), true);
            c.basicCancel(tag);
            c.close();
        });
        run("nack_requeue", () -> {
            ch.basicPublish(ex, "rk", null, b("n1"));
            GetResponse r = get(ch, q, false);
            check(!r.getEnvelope().isRedeliver(), "fresh message marked redelivered");
            ch.basicNack(r.getEnvelope().getDeliveryTag(), false, true);
            GetResponse r2 = get(ch, q, false);
            check(r2.getEnvelope().isRedeliver(), "requeued message not redelivered");
            ch.basicNack(r2.getEnvelope().getDeliveryTag(), false, false);
            check(count(q) == 0, "nack without requeue kept the message");
        });
        run("reject", () -> {
            ch.basicPublish(ex, "rk", null, b("r1"));
            GetResponse r = get(ch, q, false);
            ch.basicReject(r.getEnvelope().getDeliveryTag(), false);
            check(count(q) == 0, "reject kept the message");
        });
        run("tx", () -> {
            Channel c = conn.createChannel();
            c.txSelect();
            c.basicPublish(ex, "rk", null, b("rolled-back"));
            c.txRollback();
            check(count(q) == 0, "rolled-back publish landed");
            c.basicPublish(ex, "rk", null, b("committed"));
            c.txCommit();
            GetResponse r = get(c, q, false);
            check(new String(r.getBody(), StandardCharsets.UTF_8).equals("committed"), "committed message");
            c.basicAck(r.getEnvelope().getDeliveryTag(), false);
            c.txCommit();
            c.close();
            check(count(q) == 0, "committed ack left the message");
        });
        run("exclusive_queue", () -> {
            String anon = ch.queueDeclare().getQueue();
            try (Connection other = factory().newConnection()) {
                Channel oc = other.createChannel();
                try {
                    oc.queueDeclarePassive(anon);
                    throw new AssertionError("another connection could use an exclusive queue");
                } catch (IOException e) {
                    ShutdownSignalException s = (ShutdownSignalException) e.getCause();
                    int code = ((AMQP.Channel.Close) s.getReason()).getReplyCode();
                    check(code == 405, "reply code " + code + ", want 405 RESOURCE_LOCKED");
                }
            }
        });
        run("ttl_dead_letter", () -> {
            String dlx = ex + "-dlx", dlq = q + "-dlq", src = q + "-ttl";
            ch.exchangeDeclare(dlx, "fanout");
            ch.queueDeclare(dlq, false, false, false, null);
            ch.queueBind(dlq, dlx, "");
            Map<String, Object> a = new HashMap<>();
            a.put("x-message-ttl", 200);
            a.put("x-dead-letter-exchange", dlx);
            ch.queueDeclare(src, false, false, false, a);
            ch.basicPublish("", src, null, b("expires"));
            GetResponse[] r = new GetResponse[1];
            waitFor(10000, "dead-lettered message", () -> {
                try { return (r[0] = ch.basicGet(dlq, true)) != null; } catch (IOException e) { return false; }
            });
            List<?> deaths = (List<?>) r[0].getProps().getHeaders().get("x-death");
            check(deaths != null && ((Map<?, ?>) deaths.get(0)).get("reason").toString().equals("expired"), "x-death " + deaths);
            ch.queueDelete(src);
            ch.queueDelete(dlq);
            ch.exchangeDelete(dlx);
        });
        run("blocked_capability", () -> {
            Map<?, ?> caps = (Map<?, ?>) conn.getServerProperties().get("capabilities");
            check(Boolean.TRUE.equals(caps.get("connection.blocked")), "capabilities " + caps);
            check(Boolean.TRUE.equals(caps.get("consumer_cancel_notify")), "consumer_cancel_notify missing");
            conn.addBlockedListener(reason -> { }, () -> { });
        });
        run("heartbeat_idle", () -> {
            ConnectionFactory f = factory();
            f.setRequestedHeartbeat(1);
            try (Connection c = f.newConnection()) {
                check(c.getHeartbeat() == 1, "negotiated heartbeat " + c.getHeartbeat());
                AtomicBoolean closed = new AtomicBoolean();
                c.addShutdownListener(e -> closed.set(true));
                Thread.sleep(3500);
                check(!closed.get() && c.isOpen(), "connection closed while idle");
                c.createChannel().messageCount(q);
            }
        });
        run("close_clean", () -> {
            Connection c = factory().newConnection();
            Channel c1 = c.createChannel();
            c1.close();
            check(!c1.isOpen(), "channel still open");
            c.createChannel().messageCount(q);
            c.close();
            check(!c.isOpen(), "connection still open");
        });
        run("consumer_cancel_notify", () -> {
            String tmp = q + "-cancel";
            Channel c = conn.createChannel();
            c.queueDeclare(tmp, false, false, false, null);
            CountDownLatch cancelled = new CountDownLatch(1);
            c.basicConsume(tmp, false, new DefaultConsumer(c) {
                @Override
                public void handleCancel(String consumerTag) { cancelled.countDown(); }
            });
            ch.queueDelete(tmp);
            check(cancelled.await(5, TimeUnit.SECONDS), "no basic.cancel from the broker");
            c.close();
        });
        run("large_message", () -> {
            byte[] body = new byte[(1 << 20) + 3];
            for (int i = 0; i < body.length; i++) body[i] = (byte) i;
            ch.basicPublish(ex, "rk", null, body);
            GetResponse r = get(ch, q, true);
            check(Arrays.equals(r.getBody(), body), r.getBody().length + " bytes back of " + body.length);
        });
        run("channel_error_recovery", () -> {
            Channel c = conn.createChannel();
            try {
                c.queueDeclarePassive(q + "-missing");
                throw new AssertionError("passive declare of a missing queue succeeded");
            } catch (IOException e) {
                ShutdownSignalException s = (ShutdownSignalException) e.getCause();
                int code = ((AMQP.Channel.Close) s.getReason()).getReplyCode();
                check(code == 404, "reply code " + code + ", want 404 NOT_FOUND");
            }
            check(conn.isOpen(), "a channel error closed the connection");
            Channel c2 = conn.createChannel();
            c2.queueDeclarePassive(q);
            c2.close();
        });
        run("precondition_errors", () -> {
            // Publishing to a missing exchange closes the channel with 404, asynchronously.
            Channel c = conn.createChannel();
            CompletableFuture<Integer> closed = new CompletableFuture<>();
            c.addShutdownListener(e -> closed.complete(((AMQP.Channel.Close) e.getReason()).getReplyCode()));
            c.basicPublish(ex + "-nowhere", "k", null, b("x"));
            check(closed.get(5, TimeUnit.SECONDS) == 404, "publish to a missing exchange");
            Channel c2 = conn.createChannel();
            try {
                c2.exchangeDeclare(ex, "fanout");
                throw new AssertionError("redeclare with another type succeeded");
            } catch (IOException e) {
                int code = ((AMQP.Channel.Close) ((ShutdownSignalException) e.getCause()).getReason()).getReplyCode();
                check(code == 406, "reply code " + code + ", want 406 PRECONDITION_FAILED");
            }
            check(conn.isOpen(), "a channel error closed the connection");
        });
        run("requeue_on_close", () -> {
            Channel c = conn.createChannel();
            ch.basicPublish(ex, "rk", null, b("held"));
            GetResponse r = get(c, q, false);
            check(!r.getEnvelope().isRedeliver(), "fresh message redelivered");
            c.close();
            GetResponse r2 = get(ch, q, true);
            check(r2.getEnvelope().isRedeliver(), "requeued message not marked redelivered");
        });
        run("basic_recover", () -> {
            Channel c = conn.createChannel();
            BlockingQueue<Boolean> redelivered = new LinkedBlockingQueue<>();
            String tag = c.basicConsume(q, false, new DefaultConsumer(c) {
                @Override
                public void handleDelivery(String t, Envelope env, AMQP.BasicProperties p, byte[] body) {
                    redelivered.add(env.isRedeliver());
                }
            });
            c.basicPublish(ex, "rk", null, b("rec"));
            Boolean first = redelivered.poll(5, TimeUnit.SECONDS);
            check(Boolean.FALSE.equals(first), "first delivery " + first);
            c.basicRecover(true);
            Boolean again = redelivered.poll(5, TimeUnit.SECONDS);
            check(Boolean.TRUE.equals(again), "delivery after basic.recover " + again);
            c.basicCancel(tag);
            c.close();
            ch.queuePurge(q);
        });
        run("exchange_to_exchange_binding", () -> {
            String src = ex + "-src";
            ch.exchangeDeclare(src, "topic");
            ch.exchangeBind(ex, src, "orders.#");
            ch.queueBind(q, ex, "orders.eu");  // the routing key travels unchanged
            ch.basicPublish(src, "orders.eu", null, b("via-e2e"));
            ch.basicPublish(src, "invoices.eu", null, b("not-bound"));
            GetResponse r = get(ch, q, true);
            check(new String(r.getBody(), StandardCharsets.UTF_8).equals("via-e2e"), "routed message");
            Thread.sleep(200);
            check(count(q) == 0, "a message the exchange binding does not match was routed");
            ch.queueUnbind(q, ex, "orders.eu");
            ch.exchangeDelete(src);
        });
        run("rpc_client_direct_reply_to", () -> {
            // RpcClient's default reply-to is RabbitMQ's direct reply-to pseudo queue.
            String rq = q + "-rpc";
            Channel sch = conn.createChannel();
            sch.queueDeclare(rq, false, false, true, null);
            StringRpcServer server = new StringRpcServer(sch, rq) {
                @Override
                public String handleStringCall(String request) { return request.toUpperCase(); }
            };
            Thread t = new Thread(() -> {
                try { server.mainloop(); } catch (Exception e) { /* closed at the end */ }
            });
            t.setDaemon(true);
            t.start();
            Channel cch = conn.createChannel();
            RpcClient client = new RpcClient(cch, "", rq, 5000);
            for (int i = 0; i < 3; i++) {
                String reply = client.stringCall("ping" + i);
                check(("PING" + i).equals(reply), "rpc reply " + reply);
            }
            client.close();
            server.terminateMainloop();
            sch.close();
            cch.close();
        });
        try {
            ch.queueDelete(q);
            ch.exchangeDelete(ex);
            conn.close();
        } catch (Exception e) {
            failed++;
            System.out.println("FAIL java-amqp-client cleanup: " + e);
        }
        System.exit(failed > 0 ? 1 : 0);
    }
}
