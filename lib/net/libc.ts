/**
 * The libc calls and struct layouts behind both fast paths, UDP (lib/net/udp_fast.ts) and TCP (lib/net/tcp/fast/):
 * one symbol table, one set of constants (Linux, x86_64 and aarch64, LP64). Kept apart so the socket code reads as
 * socket code. Opening libc needs --allow-ffi; `openLibc()` returns null where that is not granted or not Linux, and
 * callers fall back to the portable path.
 */

import { type HostPort, ipv6Bytes, ipv6Text, isIPv4 } from "./address.ts";

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_DGRAM = 2;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_RCVTIMEO = 20;
export const SO_SNDBUFFORCE = 32;
export const SO_RCVBUFFORCE = 33;
/** Each received datagram carries the kernel's CLOCK_REALTIME arrival time (SCM_TIMESTAMPNS, a timespec). */
export const SO_TIMESTAMPNS = 35;
export const SCM_TIMESTAMPNS = 35;
/** A control message carrying one timespec (two i64): cmsghdr (16) + 16. */
export const CMSG_TIMESPEC_SPACE = 32;
export const MSG_DONTWAIT = 0x40;
export const MSG_TRUNC = 0x20;
export const MSG_WAITFORONE = 0x10000;
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const EAGAIN = 11;
export const EINTR = 4;
export const EMSGSIZE = 90;

// TCP and epoll (the TCP fast path).
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const MSG_NOSIGNAL = 0x4000;
/** fcntl(2): an adopted descriptor's status flags (a listener handed over must be non-blocking). */
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EINPROGRESS = 115;
export const ECONNABORTED = 103;
/** Local shortages (out of descriptors, buffers or memory): this host's trouble, not a peer's. */
export const EMFILE = 24;
export const ENFILE = 23;
export const ENOBUFS = 105;
export const ENOMEM = 12;
/** connect(2) found no free local port (the ephemeral range in use): a local shortage too. */
export const EADDRNOTAVAIL = 99;
/** struct epoll_event is packed on x86_64 ({u32 events; u64 data} in 12 bytes), natural elsewhere (16). */
export const EPOLL_EVENT_SIZE = Deno.build.arch === "x86_64" ? 12 : 16;
/** Where the 64-bit data starts in an epoll_event. */
export const EPOLL_DATA_AT = EPOLL_EVENT_SIZE === 12 ? 4 : 8;
/** UDP generic segmentation offload (Linux 4.18+): one send carries a run of datagrams of one size. */
export const SOL_UDP = 17;
export const UDP_SEGMENT = 103;
/** The most datagrams one UDP_SEGMENT send may carry on every kernel that has it (64 before 6.x raised it). */
export const GSO_MAX_SEGMENTS = 64;

// Unix sockets, descriptor passing and poll (the takeover's control socket: lib/net/fd_channel.ts).
export const AF_UNIX = 1;
export const SO_TYPE = 3;
/** struct ucred { pid_t pid; uid_t uid; gid_t gid } of a unix socket's peer, as of connect(2). */
export const SO_PEERCRED = 17;
export const SO_ACCEPTCONN = 30;
export const SCM_RIGHTS = 1;
/** Received descriptors are close-on-exec from the start. */
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
/** struct pollfd { int fd; short events; short revents }. */
export const POLLFD_SIZE = 8;
export const ECONNREFUSED = 111;
export const ENOENT = 2;
/** sizeof(struct sockaddr_un): sa_family_t + 108 bytes of path. */
export const SOCKADDR_UN_SIZE = 110;
/** sizeof(struct msghdr) on LP64. */
export const MSGHDR_SIZE = 56;

/** struct sizes and offsets (LP64 Linux). */
export const SOCKADDR_SIZE = 28; // room for sockaddr_in6; sockaddr_in uses the first 16
export const IOVEC_SIZE = 16; // { void *base; size_t len }
export const MMSGHDR_SIZE = 64; // struct msghdr (56) + unsigned msg_len + padding
export const MSG_NAME = 0;
export const MSG_NAMELEN = 8;
export const MSG_IOV = 16;
export const MSG_IOVLEN = 24;
export const MSG_CONTROL = 32;
export const MSG_CONTROLLEN = 40;
export const MSG_FLAGS = 48;
export const MSG_LEN = 56;
/** A control message carrying one u16 (UDP_SEGMENT's size): cmsghdr { size_t len; int level; int type } + data. */
export const CMSG_U16_LEN = 18;
export const CMSG_U16_SPACE = 24;
export const CMSG_LEN = 0;
export const CMSG_LEVEL = 8;
export const CMSG_TYPE = 12;
export const CMSG_DATA = 16;
/** Most messages one sendmmsg/recvmmsg call takes (UIO_MAXIOV). */
export const MAX_MMSG = 1024;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** Blocking receive, run off the main thread so the event loop stays free. */
  recvmmsg_wait: {
    name: "recvmmsg",
    parameters: ["i32", "buffer", "u32", "i32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  // TCP and epoll. ssize_t results read as i32: every length asked for fits, and -1 stays -1.
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  /** The same call run off the main thread: the reactor's wait when quiet, while the event loop parks. */
  epoll_wait_blocking: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  strerror: { parameters: ["i32"], result: "pointer" },
  // Readiness of a few descriptors (a socket and the eventfd that wakes its reader), and descriptor passing.
  poll: { parameters: ["buffer", "usize", "i32"], result: "i32" },
  /** The same call run off the main thread (a receive waiting on the event loop's behalf). */
  poll_wait: { name: "poll", parameters: ["buffer", "usize", "i32"], result: "i32", nonblocking: true },
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  geteuid: { parameters: [], result: "u32" },
  /** fcntl(fd, cmd, int arg): variadic in C; an int third argument passes as one on every LP64 ABI used here. */
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
} as const;

export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
export type LibcLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

/** libc's symbols, or null where FFI is not allowed or this is not Linux. The caller keeps the library alive. */
export function openLibc(): LibcLibrary | null {
  if (Deno.build.os !== "linux") return null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
    return Deno.dlopen("libc.so.6", SYMBOLS);
  } catch {
    return null;
  }
}

/**
 * This thread's one libc library, opened on first use and kept for the thread's life (never close it); null where
 * FFI is not allowed or this is not Linux. Every dlopen binds all the symbols afresh, 3-7 ms of the thread's time
 * each (measured), which a socket opened per session, per transcoder restart, would spend on the packet path's thread.
 * (A module-level cache on purpose: it is per thread, as each worker loads its own copy of this module.)
 */
export function sharedLibc(): LibcLibrary | null {
  if (threadLibc === undefined) threadLibc = openLibc();
  return threadLibc;
}
let threadLibc: LibcLibrary | null | undefined;

/** errno of the last failing libc call made on this thread (valid for the synchronous symbols only). */
export function errno(libc: { __errno_location(): Deno.PointerValue }): number {
  const p = libc.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/** This thread's errno, to read again after every failure (the location is the thread's for its whole life). */
export function errnoView(libc: { __errno_location(): Deno.PointerValue }): Deno.UnsafePointerView {
  return new Deno.UnsafePointerView(libc.__errno_location()!);
}

/** The kernel's text for an errno (strerror), lower case: "connection refused". */
export function describeErrno(libc: { strerror(code: number): Deno.PointerValue }, code: number): string {
  const p = libc.strerror(code);
  return p ? Deno.UnsafePointerView.getCString(p).toLowerCase() : `errno ${code}`;
}

/** Sockaddr slots are 32 bytes apart (a sockaddr_in6 is 28) so every one stays 8-byte aligned. */
export const NAME_STRIDE = 32;

/** Encodes an IP endpoint as a sockaddr at `offset`; returns its length. `v6` maps IPv4 into ::ffff:a.b.c.d. */
export function writeSockaddr(view: DataView, offset: number, ep: HostPort, v6: boolean): number {
  new Uint8Array(view.buffer, view.byteOffset + offset, NAME_STRIDE).fill(0);
  if (!v6) {
    if (!isIPv4(ep.host)) throw new Error(`Cannot reach "${ep.host}" from an IPv4 socket`);
    view.setUint16(offset, AF_INET, true);
    view.setUint16(offset + 2, ep.port, false);
    ep.host.split(".").forEach((o, i) => view.setUint8(offset + 4 + i, Number(o)));
    return 16;
  }
  view.setUint16(offset, AF_INET6, true);
  view.setUint16(offset + 2, ep.port, false);
  const bytes = isIPv4(ep.host) ? ipv6Bytes(`::ffff:${ep.host}`) : ipv6Bytes(ep.host);
  new Uint8Array(view.buffer, view.byteOffset + offset + 8, 16).set(bytes);
  return 28;
}

export function readSockaddr(view: DataView, offset: number): HostPort {
  const family = view.getUint16(offset, true);
  const port = view.getUint16(offset + 2, false);
  if (family === AF_INET) return { host: ipv4Text(view.getUint32(offset + 4, false)), port };
  const b = new Uint8Array(view.buffer, view.byteOffset + offset + 8, 16);
  const mapped = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  return { host: mapped ? ipv4Text(view.getUint32(offset + 20, false)) : ipv6Text(b), port };
}

/**
 * The text of recently read IPv4 addresses, in a direct-mapped table: an address that comes back (a client's next
 * connection, a stream's next datagram) costs a lookup, not four numbers made into a string and a new string to hash.
 */
const V4_SLOTS = 256;
const v4Keys = new Uint32Array(V4_SLOTS);
const v4Texts: (string | undefined)[] = new Array(V4_SLOTS).fill(undefined);

function ipv4Text(addr: number): string {
  const i = (addr ^ (addr >>> 8) ^ (addr >>> 16)) & (V4_SLOTS - 1);
  const known = v4Texts[i];
  if (known !== undefined && v4Keys[i] === addr) return known;
  const text = `${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}`;
  v4Keys[i] = addr;
  v4Texts[i] = text;
  return text;
}
