/*
 * The native reference for the UDP fast path: a recvmmsg/sendmmsg relay in C, batches of 64, the same work the
 * edgenode relay does (one listen port, every datagram to one target, from the same socket).
 * With "gso" it sends as the edgenode relay does by default: each run of datagrams of one size (and one shorter
 * datagram after it) as one UDP_SEGMENT message, which the kernel cuts into datagrams late.
 * Built by tests/bench/udp_bench.ts with the system C compiler.
 * Usage: c_relay LISTEN_PORT TARGET_PORT [gso] (loopback).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define BATCH 64
#define SLOT 65536
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000

int main(int argc, char **argv) {
  if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "gso") != 0)) {
    return fprintf(stderr, "usage: c_relay LISTEN_PORT TARGET_PORT [gso]\n"), 2;
  }
  int gso = argc == 4;
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
  static char ctl[BATCH][CMSG_SPACE(sizeof(unsigned short))];
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
    int k = 0;
    for (int i = 0; i < n;) {
      int len = in[i].msg_len, r = 1;
      if (gso && len > 0) {
        int most = GSO_MAX_BYTES / len < GSO_MAX_SEGMENTS ? GSO_MAX_BYTES / len : GSO_MAX_SEGMENTS;
        if (most > n - i) most = n - i;
        while (r < most && (int)in[i + r].msg_len == len) r++;
        if (r < most && in[i + r].msg_len > 0 && (int)in[i + r].msg_len < len) r++;
      }
      for (int m = i; m < i + r; m++) {
        oiov[m].iov_base = data[m];
        oiov[m].iov_len = in[m].msg_len;
      }
      memset(&out[k], 0, sizeof out[k]);
      out[k].msg_hdr.msg_name = &to;
      out[k].msg_hdr.msg_namelen = sizeof to;
      out[k].msg_hdr.msg_iov = &oiov[i];
      out[k].msg_hdr.msg_iovlen = r;
      if (r > 1) {
        out[k].msg_hdr.msg_control = ctl[k];
        out[k].msg_hdr.msg_controllen = sizeof ctl[k];
        struct cmsghdr *c = CMSG_FIRSTHDR(&out[k].msg_hdr);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(unsigned short));
        *(unsigned short *)CMSG_DATA(c) = len;
      }
      k++;
      i += r;
    }
    sendmmsg(fd, out, k, MSG_DONTWAIT);
  }
}
