// The floor of issue 19 goal 2: the least a process that passes each message on as it
// arrives can spend per message at a fixed rate on this machine (floor.sh drives it).
//   relay relay PORT: accepts a publisher ('P' hello) and a consumer ('C' hello); every byte
//     from the publisher goes to the consumer, bytes from the consumer (acks) are read and
//     dropped. One thread, blocking epoll_wait, non-blocking sockets: one wake-up, one read
//     and one write per message at a low rate. (A full consumer socket is retried at once:
//     never the case at the rates floor.sh runs.)
//   relay pub PORT RATE SECS SIZE: sends SIZE-byte messages at RATE/s on an absolute schedule.
//   relay sub PORT SIZE ACK_EVERY: reads SIZE-byte messages, sends an 8-byte ack every
//     ACK_EVERY messages, prints how many arrived.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static int conn(int port, char hello) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
    int one = 1; setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    write(s, &hello, 1);
    return s;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int port = atoi(argv[2]);
    if (!strcmp(argv[1], "pub")) {
        int rate = atoi(argv[3]), secs = atoi(argv[4]), size = atoi(argv[5]);
        int s = conn(port, 'P');
        char *buf = calloc(1, size);
        struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
        long step = 1000000000L / rate;
        for (long i = 0; i < (long)rate * secs; i++) {
            t.tv_nsec += step; while (t.tv_nsec >= 1000000000L) { t.tv_nsec -= 1000000000L; t.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
            for (int off = 0; off < size;) { int n = write(s, buf + off, size - off); if (n <= 0) return 1; off += n; }
        }
        return 0;
    }
    if (!strcmp(argv[1], "sub")) {
        int size = atoi(argv[3]), every = atoi(argv[4]);
        int s = conn(port, 'C');
        char *buf = malloc(65536); long got = 0, acked = 0; char ack[8] = {0};
        for (;;) {
            int n = read(s, buf, 65536); if (n <= 0) break;
            got += n;
            long msgs = got / size;
            if (msgs - acked >= every) { write(s, ack, 8); acked = msgs; }
        }
        printf("sub: %ld messages\n", got / size);
        return 0;
    }
    // relay
    int l = socket(AF_INET, SOCK_STREAM, 0); int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 16)) { perror("bind"); return 1; }
    int pub = -1, sub = -1;
    while (pub < 0 || sub < 0) {
        int c = accept(l, NULL, NULL); char h; read(c, &h, 1);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (h == 'P') pub = c; else sub = c;
    }
    fcntl(pub, F_SETFL, O_NONBLOCK); fcntl(sub, F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = pub}; epoll_ctl(ep, EPOLL_CTL_ADD, pub, &e);
    e.data.fd = sub; epoll_ctl(ep, EPOLL_CTL_ADD, sub, &e);
    char *buf = malloc(1 << 20);
    for (;;) {
        struct epoll_event ev[4];
        int n = epoll_wait(ep, ev, 4, -1);
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            int r = read(fd, buf, 1 << 20);
            if (r == 0) return 0;
            if (r < 0) continue;
            if (fd == pub) {
                for (int off = 0; off < r;) { int w = write(sub, buf + off, r - off); if (w < 0) { if (errno == EAGAIN) continue; return 1; } off += w; }
            }
        }
    }
}
