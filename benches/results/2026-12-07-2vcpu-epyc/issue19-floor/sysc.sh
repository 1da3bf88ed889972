#!/bin/bash
# sysc.sh PID SECS: the system calls of process PID (all its threads) per second, by name,
# counted with perf's syscall tracepoints (cheap enough not to change the rate, unlike strace).
perf stat -e 'syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_membarrier,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_clock_gettime,syscalls:sys_enter_sendmsg,syscalls:sys_enter_futex' -p $1 -- sleep $2 2>&1 | grep syscalls | awk -v s=$2 '$1 > 0 {printf "  %s %.0f/s\n", $2, $1/s}'
