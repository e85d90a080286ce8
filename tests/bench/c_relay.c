/*
 * The native reference for the UDP fast path: a recvmmsg/sendmmsg relay in C, batches of 64, the same work the
 * edgenode relay does (one listen port, every datagram to one target, from the same socket).
 * Built by tests/bench/udp_bench.ts with the system C compiler. Usage: c_relay LISTEN_PORT TARGET_PORT (loopback).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SLOT 65536

int main(int argc, char **argv) {
  if (argc != 3) return fprintf(stderr, "usage: c_relay LISTEN_PORT TARGET_PORT\n"), 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
  struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
  inet_pton(AF_INET, "127.0.0.1", &me.sin_addr);
  if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) return perror("bind"), 1;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  static char data[BATCH][SLOT];
  struct iovec iov[BATCH];
  struct mmsghdr in[BATCH], out[BATCH];
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = data[i];
    iov[i].iov_len = SLOT;
    memset(&in[i], 0, sizeof in[i]);
    in[i].msg_hdr.msg_iov = &iov[i];
    in[i].msg_hdr.msg_iovlen = 1;
  }
  fprintf(stderr, "c_relay listening\n");
  for (;;) {
    int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
    if (n <= 0) continue;
    struct iovec oiov[BATCH];
    for (int i = 0; i < n; i++) {
      oiov[i].iov_base = data[i];
      oiov[i].iov_len = in[i].msg_len;
      memset(&out[i], 0, sizeof out[i]);
      out[i].msg_hdr.msg_name = &to;
      out[i].msg_hdr.msg_namelen = sizeof to;
      out[i].msg_hdr.msg_iov = &oiov[i];
      out[i].msg_hdr.msg_iovlen = 1;
    }
    sendmmsg(fd, out, n, MSG_DONTWAIT);
  }
}
