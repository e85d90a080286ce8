/**
 * The Linux fast path for UDP: recvmmsg/sendmmsg through FFI to libc, a batch per system call.
 *
 * Memory: every buffer the kernel sees (packet slots, iovecs, mmsghdrs, sockaddrs) lives in a few large slabs owned
 * by the socket object for its whole life. A typed array whose pointer the kernel holds must never be collected or
 * moved (see PLATFORM.md: that corrupted the heap), so nothing passed by pointer is a short-lived or small array.
 *
 * Receiving first tries a non-blocking recvmmsg on the main thread (no thread hop while packets keep coming) and
 * only when the queue is empty waits in poll(2), run off the main thread, on the socket and on the socket object's
 * eventfd. Waking a waiting reader (close, `interrupt()`) writes to that eventfd and never touches the socket: after
 * a takeover (lib/net/handover.ts) another process reads the same socket, and shutdown(SHUT_RD) would stop its reads.
 *
 * A socket bound to an address the previous process handed over is adopted, not bound (see `openFastUdp`).
 */
import { RECEIVE_STREAK, yieldToEventLoop } from "../core/yield.ts";
import { StartError } from "../core/errors.ts";
import { formatHostPort, isIPv4, isIPv6 } from "./address.ts";
import {
  AF_INET,
  AF_INET6,
  CMSG_DATA,
  CMSG_LEN,
  CMSG_LEVEL,
  CMSG_TIMESPEC_SPACE,
  CMSG_TYPE,
  CMSG_U16_LEN,
  CMSG_U16_SPACE,
  EAGAIN,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EINTR,
  EMSGSIZE,
  errno,
  errnoView,
  GSO_MAX_SEGMENTS,
  IOVEC_SIZE,
  type Libc,
  MAX_MMSG,
  MMSGHDR_SIZE,
  MSG_CONTROL,
  MSG_CONTROLLEN,
  MSG_DONTWAIT,
  MSG_FLAGS,
  MSG_IOV,
  MSG_IOVLEN,
  MSG_LEN,
  MSG_NAME,
  MSG_NAMELEN,
  MSG_TRUNC,
  NAME_STRIDE,
  POLLFD_SIZE,
  POLLIN,
  readSockaddr,
  SCM_TIMESTAMPNS,
  sharedLibc,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SO_TIMESTAMPNS,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCKADDR_SIZE,
  SOL_SOCKET,
  SOL_UDP,
  UDP_SEGMENT,
  writeSockaddr,
} from "./libc.ts";
import { processSockets } from "./handover.ts";
import { PinnedBatch } from "./pinned.ts";
import {
  type Batch,
  type Destinations,
  emptyStats,
  type Endpoint,
  UDP_DEFAULTS,
  type UdpOptions,
  type UdpSocket,
  type UdpStats,
} from "./udp.ts";

/** How long a receive waiting off the main thread waits before looking at the closed flag again. */
const WAIT_SLICE_MS = 200;
const TWO32 = 2 ** 32;
/** Most payload bytes in one GSO message: under the 64 KiB an IP packet can carry, with either header. */
const GSO_MAX_BYTES = 65_000;
const ERRNO_TEXT: Record<number, string> = {
  1: "operation not permitted",
  13: "permission denied",
  97: "address family not supported",
  98: "address already in use",
  99: "address not available on this host",
};

/**
 * The fast socket, or null where FFI to libc is not available (callers then use the portable path). A socket the
 * previous process handed over for this address (lib/net/handover.ts) is adopted instead of bound; the socket is
 * then listed in the registry as this process's, to hand on in turn. `listed: false` keeps it out of the registry
 * (a port derived from one the kernel chose: no config names it).
 */
export function openFastUdp(addr: Endpoint, options: UdpOptions = {}, listed = true): FastUdp | null {
  const lib = sharedLibc();
  if (!lib) return null;
  return new FastUdp(lib, { bind: addr, listed }, options);
}

/** What a thread needs to work a fast socket another thread opened and still owns (see `FastUdp.descriptor`). */
export interface FastDescriptor {
  readonly fd: number;
  readonly local: Endpoint;
  readonly v6: boolean;
  /** The opener's eventfd: readable once a reader must stop waiting (`interrupt()`, close). */
  readonly wake: number;
}

/**
 * A second FastUdp over a socket opened elsewhere in this process (a worker thread working the socket the main
 * thread opened), with its own buffers and `stats`. Closing it leaves the socket open: its opener closes it.
 * With `sources: false` its receives do not ask the kernel who sent each datagram (a relay that never looks saves
 * the copy); `from()` of its batches then throws.
 */
export function adoptFastUdp(
  descriptor: FastDescriptor,
  options: UdpOptions = {},
  stats?: UdpStats,
  sources = true,
): FastUdp | null {
  const lib = sharedLibc();
  if (!lib) return null;
  return new FastUdp(lib, { adopt: descriptor, sources }, options, stats);
}

/** A pointer-sized field written as two 32-bit halves (user-space addresses fit in 53 bits). */
function put64(u32: Uint32Array, byteOffset: number, value: number): void {
  const i = byteOffset >>> 2;
  u32[i] = value >>> 0;
  u32[i + 1] = Math.floor(value / TWO32);
}

function addressOf(buffer: Uint8Array): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
}

class FastDestinations implements Destinations {
  /** Encoded sockaddrs, NAME_STRIDE apart; at least 256 bytes so the slab never lives on the moving JS heap. */
  readonly names: Uint8Array;
  readonly lengths: number[] = [];
  readonly base: number;
  readonly sent: Float64Array;
  readonly dropped: Float64Array;

  constructor(
    readonly endpoints: readonly Endpoint[],
    v6: boolean,
    counters?: { sent: Float64Array; dropped: Float64Array },
  ) {
    this.names = new Uint8Array(Math.max(256, endpoints.length * NAME_STRIDE));
    const view = new DataView(this.names.buffer);
    endpoints.forEach((ep, i) => this.lengths.push(writeSockaddr(view, i * NAME_STRIDE, ep, v6)));
    this.base = addressOf(this.names);
    this.sent = counters?.sent ?? new Float64Array(endpoints.length);
    this.dropped = counters?.dropped ?? new Float64Array(endpoints.length);
  }
}

class FastBatch implements Batch {
  count = 0;
  constructor(private readonly socket: FastUdp) {}
  data(i: number): Uint8Array {
    return this.socket.slotData(i);
  }
  from(i: number): Endpoint {
    return this.socket.slotFrom(i);
  }
  truncated(i: number): boolean {
    return this.socket.slotTruncated(i);
  }
  sameSource(i: number, j: number): boolean {
    return this.socket.slotSameSource(i, j);
  }
  slab(): Uint8Array {
    return this.socket.slab;
  }
  offset(i: number): number {
    return this.socket.slotOffset(i);
  }
  /** Address and length of datagram `i`, for sends that point the kernel at it without copying. */
  address(i: number): number {
    return this.socket.slotAddress(i);
  }
  length(i: number): number {
    return this.socket.slotLength(i);
  }
  arrivalUs(i: number): number {
    return this.socket.slotArrivalUs(i);
  }
}

export class FastUdp implements UdpSocket {
  readonly impl = "fast" as const;
  readonly local: Endpoint;
  readonly stats: UdpStats;
  readonly #lib: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>>;
  readonly #c: Libc;
  readonly #fd: number;
  readonly #v6: boolean;
  readonly #batchSize: number;
  readonly #slot: number;
  /** Distance between slots: the slot rounded up to 8 bytes, so the headers after the slots stay aligned. */
  readonly #stride: number;
  readonly #batch = new FastBatch(this);
  // Receive slab: [slots][iovecs][mmsghdrs][sockaddrs][timestamp control messages, when asked for]
  readonly #rx: Uint8Array;
  readonly #rxU32: Uint32Array;
  readonly #rxView: DataView;
  readonly #rxBase: number;
  /** The receive headers, as the view recvmmsg is given (made once: a view per call costs as much as the call). */
  readonly #rxHdrs: Uint8Array;
  readonly #rxHdr: number;
  readonly #rxName: number;
  /** Where the control message of each receive header is (its arrival time), or -1 without `timestamps`. */
  readonly #rxCtl: number;
  // Send slab: [mmsghdrs][iovecs][a UDP_SEGMENT control message per header][copy area for datagrams given as arrays]
  readonly #tx: Uint8Array;
  readonly #txU32: Uint32Array;
  readonly #txBase: number;
  readonly #txIov = MAX_MMSG * MMSGHDR_SIZE;
  readonly #txCtl = MAX_MMSG * (MMSGHDR_SIZE + IOVEC_SIZE);
  readonly #txCopy = MAX_MMSG * (MMSGHDR_SIZE + IOVEC_SIZE + CMSG_U16_SPACE);
  readonly #txCopySize: number;
  /** The segment size in each header's control message, as u16s over the slab. */
  readonly #txGsoSize: Uint16Array;
  /** Length of each laid-out datagram (iovec). */
  readonly #txIovLens = new Uint32Array(MAX_MMSG);
  /** The runs the laid-out datagrams form (the same for every destination): first iovec, datagrams, bytes, size. */
  readonly #runAt = new Uint32Array(MAX_MMSG);
  readonly #runSegs = new Uint32Array(MAX_MMSG);
  readonly #runBytes = new Float64Array(MAX_MMSG);
  readonly #runSize = new Uint32Array(MAX_MMSG);
  /** Bytes, datagrams and destination index of each prepared message, for the counts. */
  readonly #txLens = new Float64Array(MAX_MMSG);
  readonly #txSegs = new Uint32Array(MAX_MMSG);
  readonly #txDest = new Uint32Array(MAX_MMSG);
  /** Largest datagram sent in GSO runs; 0 where the kernel cannot (or config says not to). */
  #gsoMax: number;
  /** errno of this thread (the one that made the socket object, which is the one that sends). */
  readonly #errno: Deno.UnsafePointerView;
  #txTo: FastDestinations | null = null;
  // Scratch for small syscall arguments, inside a slab large enough not to move.
  readonly #scratch = new Uint8Array(256);
  #closed = false;
  #waiting: Promise<number> | null = null;
  /** The eventfd that wakes readers (the opener's; an adopter uses the opener's). */
  readonly #wake: number;
  /** pollfds of the socket and the eventfd (0..16), the eventfd's 8-byte value (128); large enough not to move. */
  readonly #poll = new Uint8Array(256);
  /** The last blocking receive took less than a batch (the queue was empty then): the next one polls first. */
  #drained = false;
  /** Set once a wake came: later receives return null without reading. */
  #interrupted = false;
  /** How long a blocking receive waits in one go (-1: until data or a wake). */
  #sliceMs = WAIT_SLICE_MS;
  /** Takes the socket out of the process's registry (before it is closed). */
  #unlist: () => void = () => {};
  /** Batches taken without yielding to the event loop. */
  #streak = 0;
  /** Receive headers whose msg_namelen/msg_controllen need setting (all of the batch before the first receive). */
  #dirty: number;
  /** Whether receives ask for each datagram's source address. */
  readonly #sources: boolean;

  /** False for an adopted socket: its opener closes the descriptor. */
  readonly #owner: boolean;

  constructor(
    lib: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>>,
    source: { bind: Endpoint; listed?: boolean } | { adopt: FastDescriptor; sources?: boolean },
    options: UdpOptions,
    stats: UdpStats = emptyStats(),
  ) {
    this.#lib = lib;
    this.#c = lib.symbols as unknown as Libc;
    this.stats = stats;
    this.#batchSize = Math.min(MAX_MMSG, Math.max(1, options.batch ?? UDP_DEFAULTS.batch));
    this.#sources = !("adopt" in source) || source.sources !== false;
    const stamps = options.timestamps === true;
    this.#dirty = this.#sources || stamps ? this.#batchSize : 0;
    this.#slot = Math.min(65535, Math.max(1, options.maxDatagram ?? UDP_DEFAULTS.maxDatagram));
    this.#stride = Math.ceil(this.#slot / 8) * 8;
    if ("adopt" in source) {
      ({ fd: this.#fd, local: this.local, v6: this.#v6, wake: this.#wake } = source.adopt);
      this.#owner = false;
    } else {
      this.#owner = true;
      const inherited = source.listed === false ? null : processSockets().take("udp", source.bind);
      [this.#fd, this.#v6, this.local] = this.#open(source.bind, options, inherited);
      this.#wake = this.#c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (this.#wake < 0) {
        const reason = describeErrno(errno(this.#c));
        this.#c.close(this.#fd);
        throw new StartError(`Cannot open udp ${formatHostPort(source.bind)}: eventfd: ${reason}`);
      }
      if (source.listed !== false) this.#unlist = processSockets().hold("udp", source.bind, this.#fd);
    }
    const pv = new DataView(this.#poll.buffer);
    pv.setInt32(0, this.#fd, true);
    pv.setInt16(4, POLLIN, true);
    pv.setInt32(POLLFD_SIZE, this.#wake, true);
    pv.setInt16(POLLFD_SIZE + 4, POLLIN, true);

    const b = this.#batchSize;
    this.#rxHdr = b * this.#stride + b * IOVEC_SIZE;
    this.#rxName = this.#rxHdr + b * MMSGHDR_SIZE;
    this.#rxCtl = stamps ? this.#rxName + b * NAME_STRIDE : -1;
    this.#rx = new Uint8Array(this.#rxName + b * NAME_STRIDE + (stamps ? b * CMSG_TIMESPEC_SPACE : 0));
    this.#rxU32 = new Uint32Array(this.#rx.buffer);
    this.#rxView = new DataView(this.#rx.buffer);
    this.#rxBase = addressOf(this.#rx);
    this.#rxHdrs = this.#rx.subarray(this.#rxHdr);
    const iov = b * this.#stride;
    for (let i = 0; i < b; i++) {
      put64(this.#rxU32, iov + i * IOVEC_SIZE, this.#rxBase + i * this.#stride);
      put64(this.#rxU32, iov + i * IOVEC_SIZE + 8, this.#slot);
      const h = this.#rxHdr + i * MMSGHDR_SIZE;
      if (this.#sources) put64(this.#rxU32, h + MSG_NAME, this.#rxBase + this.#rxName + i * NAME_STRIDE);
      put64(this.#rxU32, h + MSG_IOV, this.#rxBase + iov + i * IOVEC_SIZE);
      put64(this.#rxU32, h + MSG_IOVLEN, 1);
      if (stamps) put64(this.#rxU32, h + MSG_CONTROL, this.#rxBase + this.#rxCtl + i * CMSG_TIMESPEC_SPACE);
    }
    if (stamps) {
      new DataView(this.#scratch.buffer).setInt32(0, 1, true);
      if (this.#c.setsockopt(this.#fd, SOL_SOCKET, SO_TIMESTAMPNS, this.#scratch, 4) !== 0) this.#rxCtl = -1;
    }

    this.#txCopySize = 256 * 1024;
    this.#tx = new Uint8Array(this.#txCopy + this.#txCopySize);
    this.#txU32 = new Uint32Array(this.#tx.buffer);
    this.#txBase = addressOf(this.#tx);
    this.#txGsoSize = new Uint16Array(this.#tx.buffer, this.#txCtl, (MAX_MMSG * CMSG_U16_SPACE) >>> 1);
    const ctl = new DataView(this.#tx.buffer, this.#txCtl);
    for (let k = 0; k < MAX_MMSG; k++) {
      put64(this.#txU32, k * MMSGHDR_SIZE + MSG_CONTROL, this.#txBase + this.#txCtl + k * CMSG_U16_SPACE);
      ctl.setUint32(k * CMSG_U16_SPACE + CMSG_LEN, CMSG_U16_LEN, true);
      ctl.setInt32(k * CMSG_U16_SPACE + CMSG_LEVEL, SOL_UDP, true);
      ctl.setInt32(k * CMSG_U16_SPACE + CMSG_TYPE, UDP_SEGMENT, true);
    }
    this.#errno = errnoView(this.#c);
    this.#gsoMax = options.gso !== false && this.#canSegment() ? 65535 : 0;
  }

  /** Whether this kernel segments UDP sends (it knows the UDP_SEGMENT option). */
  #canSegment(): boolean {
    const scratch = new DataView(this.#scratch.buffer);
    scratch.setUint32(128, 4, true);
    return this.#c.getsockopt(this.#fd, SOL_UDP, UDP_SEGMENT, this.#scratch, this.#scratch.subarray(128)) ===
      0;
  }

  /** Whether sends currently go as GSO runs (false once the kernel refused one for a reason other than size). */
  get gso(): boolean {
    return this.#gsoMax > 0;
  }

  /**
   * Opens, sizes and binds the socket (or sizes the `inherited` one, already bound to this address); returns its
   * descriptor, family and bound address.
   */
  #open(addr: Endpoint, options: UdpOptions, inherited: number | null): [number, boolean, Endpoint] {
    const c = this.#c;
    const where = `udp ${formatHostPort(addr)}`;
    const host = addr.host === "localhost" ? "127.0.0.1" : addr.host;
    if (!isIPv4(host) && !isIPv6(host)) throw new StartError(`Cannot listen on ${where}: not an IP address`);
    const v6 = isIPv6(host);

    const fd = inherited ?? c.socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new StartError(`Cannot open ${where}: ${describeErrno(errno(c))}`);
    const scratch = new DataView(this.#scratch.buffer);
    const bufferBytes = options.bufferBytes ?? UDP_DEFAULTS.bufferBytes;
    scratch.setInt32(0, bufferBytes, true);
    for (const [force, plain] of [[SO_RCVBUFFORCE, SO_RCVBUF], [SO_SNDBUFFORCE, SO_SNDBUF]]) {
      // The FORCE variants pass the system maximum when we are allowed to; otherwise the kernel caps the request.
      if (c.setsockopt(fd, SOL_SOCKET, force, this.#scratch, 4) !== 0) {
        c.setsockopt(fd, SOL_SOCKET, plain, this.#scratch, 4);
      }
    }
    const len = writeSockaddr(scratch, 64, { host, port: addr.port }, v6);
    if (inherited === null && c.bind(fd, this.#scratch.subarray(64), len) !== 0) {
      const reason = describeErrno(errno(c));
      c.close(fd);
      throw new StartError(`Cannot listen on ${where}: ${reason}`);
    }
    scratch.setUint32(128, SOCKADDR_SIZE, true);
    c.getsockname(fd, this.#scratch.subarray(64), this.#scratch.subarray(128));
    return [fd, v6, readSockaddr(scratch, 64)];
  }

  /** What `adoptFastUdp` needs to work this socket from another thread. */
  get descriptor(): FastDescriptor {
    return { fd: this.#fd, local: { ...this.local }, v6: this.#v6, wake: this.#wake };
  }

  // --- receiving -------------------------------------------------------------------------------------------

  async receive(): Promise<Batch | null> {
    const c = this.#c;
    const hdrs = this.#rxHdrs;
    while (!this.#closed && !this.#interrupted) {
      // After RECEIVE_STREAK ready batches the event loop gets its turn (see core/yield.ts). A hop through the
      // blocking call on a thread is not one: its completion can be taken before due timers (seen in CI).
      if (this.#streak >= RECEIVE_STREAK) {
        this.#streak = 0;
        await yieldToEventLoop();
        if (this.#closed) break;
      }
      // A receive that took less than a batch left the queue empty: wait first instead of asking for nothing (one
      // recvmmsg fewer per wake when datagrams come slower than batches fill).
      if (!this.#drained) {
        this.#resetNames();
        const n = c.recvmmsg(this.#fd, hdrs, this.#batchSize, MSG_DONTWAIT, null);
        if (n > 0) {
          this.#streak++;
          this.#drained = n < this.#batchSize;
          return this.#account(n);
        }
        if (n < 0 && this.#errno.getInt32() !== EAGAIN) this.stats.errors++;
        if (this.#woken()) break;
      }
      this.#drained = false;
      this.#streak = 0;
      // Nothing queued: wait off the main thread until the socket is readable, a wake, or the slice passed.
      this.#waiting = c.poll_wait(this.#poll, 2n, WAIT_SLICE_MS) as Promise<number>;
      await this.#waiting;
      this.#waiting = null;
    }
    return null;
  }

  /** Whether a wake came (`interrupt()` in any thread, close): receives then return null, as after a stop. */
  #woken(): boolean {
    if (
      !this.#interrupted && (new DataView(this.#poll.buffer).getInt16(POLLFD_SIZE + 6, true) & POLLIN) !== 0
    ) {
      this.#interrupted = true;
    }
    return this.#interrupted;
  }

  /**
   * The next batch, waiting in the kernel on this thread (a worker's: it blocks the thread) for at most the wait
   * slice; an empty batch when the slice passed, null once closed or stopped. `stop` is a cell another thread sets
   * to non-zero before it calls `interrupt()`: the receive it wakes (which the kernel reports as one empty datagram)
   * then returns null instead of counting it.
   */
  receiveBlocking(stop?: Int32Array): Batch | null {
    // A receive that took less than a batch left the queue empty: wait first instead of asking for nothing.
    let waited = false;
    if (this.#drained) {
      this.#c.poll(this.#poll, 2n, this.#sliceMs);
      waited = true;
    }
    for (;; waited = true) {
      // Looked at before reading: what a receive took is always returned (and sent on), never dropped for a stop.
      if (this.#closed || (stop && Atomics.load(stop, 0) !== 0) || this.#woken()) return null;
      this.#resetNames();
      const n = this.#c.recvmmsg(this.#fd, this.#rxHdrs, this.#batchSize, MSG_DONTWAIT, null);
      if (n > 0) {
        this.#drained = n < this.#batchSize;
        return this.#account(n);
      }
      if (n < 0) {
        const e = this.#errno.getInt32();
        if (e !== EAGAIN && e !== EINTR) this.stats.errors++;
      }
      if (waited) break;
      this.#c.poll(this.#poll, 2n, this.#sliceMs);
    }
    this.#drained = false;
    this.#batch.count = 0;
    return this.#batch;
  }

  /**
   * How long `receiveBlocking` waits before it returns with nothing (0: until data or `interrupt()`); 200 ms unless
   * set. A setting of this object only: the socket itself is not changed (another process may share it).
   */
  setWaitSlice(ms: number): void {
    this.#sliceMs = ms > 0 ? Math.ceil(ms) : -1;
  }

  /**
   * Wakes every receive waiting on this socket, in any thread of this process; later waits return at once. The
   * socket is left as it is: a process it was handed to goes on reading it.
   *
   * For good, and for every reader: the eventfd is the opener's, shared by each FastUdp adopting the descriptor in
   * this process (`adoptFastUdp`, a relay thread), and it is never drained. So after one `interrupt()` every one of
   * them, in any thread, returns null from its next receive on; none of them reads that socket again. Interrupt only
   * when every reader of the socket is to stop.
   */
  interrupt(): void {
    if (this.#closed) return;
    this.#interrupted = true;
    const v = new DataView(this.#poll.buffer);
    v.setBigUint64(128, 1n, true);
    this.#c.write(this.#wake, this.#poll.subarray(128, 136), 8n);
  }

  /** The kernel rewrote msg_namelen and msg_controllen only in the headers it filled last time: reset just those. */
  #resetNames(): void {
    const names = this.#sources ? SOCKADDR_SIZE : 0;
    const control = this.#rxCtl >= 0 ? CMSG_TIMESPEC_SPACE : 0;
    for (let i = 0; i < this.#dirty; i++) {
      const h = this.#rxHdr + i * MMSGHDR_SIZE;
      this.#rxU32[(h + MSG_NAMELEN) >>> 2] = names;
      this.#rxU32[(h + MSG_CONTROLLEN) >>> 2] = control;
    }
    this.#dirty = 0;
  }

  #account(n: number): Batch {
    if (this.#sources || this.#rxCtl >= 0) this.#dirty = n;
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      bytes += this.slotLength(i);
      if (this.slotTruncated(i)) this.stats.truncated++;
    }
    this.stats.rx_packets += n;
    this.stats.rx_bytes += bytes;
    this.#batch.count = n;
    return this.#batch;
  }

  slotLength(i: number): number {
    return Math.min(this.#slot, this.#rxU32[(this.#rxHdr + i * MMSGHDR_SIZE + MSG_LEN) >>> 2]);
  }
  slotTruncated(i: number): boolean {
    return (this.#rxU32[(this.#rxHdr + i * MMSGHDR_SIZE + MSG_FLAGS) >>> 2] & MSG_TRUNC) !== 0;
  }
  /** The receive buffer every slot lives in (for reads without a view per datagram). */
  get slab(): Uint8Array {
    return this.#rx;
  }
  slotOffset(i: number): number {
    return i * this.#stride;
  }
  slotData(i: number): Uint8Array {
    return this.#rx.subarray(i * this.#stride, i * this.#stride + this.slotLength(i));
  }
  slotAddress(i: number): number {
    return this.#rxBase + i * this.#stride;
  }
  slotArrivalUs(i: number): number {
    if (this.#rxCtl < 0) return NaN;
    const h = this.#rxHdr + i * MMSGHDR_SIZE;
    if (this.#rxU32[(h + MSG_CONTROLLEN) >>> 2] < CMSG_TIMESPEC_SPACE) return NaN;
    const c = this.#rxCtl + i * CMSG_TIMESPEC_SPACE;
    const v = this.#rxView;
    if (
      v.getInt32(c + CMSG_LEVEL, true) !== SOL_SOCKET || v.getInt32(c + CMSG_TYPE, true) !== SCM_TIMESTAMPNS
    ) {
      return NaN;
    }
    // struct timespec { i64 tv_sec; i64 tv_nsec }: seconds fit in 53 bits for the next few million years.
    const sec = v.getUint32(c + CMSG_DATA, true) + v.getUint32(c + CMSG_DATA + 4, true) * TWO32;
    return sec * 1e6 + v.getUint32(c + CMSG_DATA + 8, true) / 1e3;
  }
  /** Whether datagrams `i` and `j` have the same sender, from the raw sockaddrs (no allocation). */
  slotSameSource(i: number, j: number): boolean {
    if (!this.#sources) return false;
    const u = this.#rxU32;
    const len = u[(this.#rxHdr + i * MMSGHDR_SIZE + MSG_NAMELEN) >>> 2];
    if (len === 0 || len > NAME_STRIDE || len !== u[(this.#rxHdr + j * MMSGHDR_SIZE + MSG_NAMELEN) >>> 2]) {
      return false;
    }
    const a = (this.#rxName + i * NAME_STRIDE) >>> 2;
    const b = (this.#rxName + j * NAME_STRIDE) >>> 2;
    // Whole words: a sockaddr's length is a multiple of 4 (16 or 28).
    for (let w = 0; w < len >>> 2; w++) if (u[a + w] !== u[b + w]) return false;
    return true;
  }
  slotFrom(i: number): Endpoint {
    if (!this.#sources) throw new Error("this socket does not read source addresses");
    return readSockaddr(this.#rxView, this.#rxName + i * NAME_STRIDE);
  }

  // --- sending ---------------------------------------------------------------------------------------------

  /** `counters` (sent, dropped), when given, are where the per-destination counts go (shared with another thread). */
  destinations(
    endpoints: readonly Endpoint[],
    counters?: { sent: Float64Array; dropped: Float64Array },
  ): Destinations {
    return new FastDestinations(endpoints.map((e) => ({ ...e })), this.#v6, counters);
  }

  send(packets: Batch | readonly Uint8Array[], to: Destinations): void {
    if (this.#closed) return;
    const dest = to instanceof FastDestinations ? to : new FastDestinations(to.endpoints, this.#v6);
    if (dest.endpoints.length === 0) return;
    this.#txTo = dest;
    const zeroCopy = packets instanceof FastBatch || packets instanceof PinnedBatch;
    const isBatch = "count" in packets;
    const count = isBatch ? packets.count : packets.length;
    const u32 = this.#txU32;
    const lens = this.#txIovLens;
    // A chunk at a time: up to MAX_MMSG datagrams laid out as iovecs (copied into the copy area when given as
    // arrays), then the messages that send them to every destination.
    let i = 0;
    while (i < count) {
      let v = 0; // iovecs filled
      let copied = 0; // bytes used in the copy area
      for (; i < count && v < MAX_MMSG; i++) {
        let addr: number;
        let len: number;
        if (zeroCopy) {
          len = packets.length(i);
          // A socket's batch never holds one this long; a sandbox's answer (PinnedBatch) may say so.
          if (len > 65535) {
            this.stats.errors++;
            continue;
          }
          addr = packets.address(i);
        } else {
          const p = isBatch ? packets.data(i) : packets[i];
          len = p.length;
          if (len > 65535) {
            this.stats.errors++;
            continue;
          }
          if (copied + len > this.#txCopySize) break;
          this.#tx.set(p, this.#txCopy + copied);
          addr = this.#txBase + this.#txCopy + copied;
          copied += len;
        }
        const iov = this.#txIov + v * IOVEC_SIZE;
        put64(u32, iov, addr);
        put64(u32, iov + 8, len);
        lens[v++] = len;
      }
      this.#flush(this.#messages(this.#runs(v), dest));
    }
  }

  /**
   * Cuts the `v` laid-out datagrams into runs; returns how many. With GSO a run of datagrams of one size (and one
   * shorter datagram after it) goes as one message the kernel cuts into datagrams late: one route lookup and one
   * trip down the stack for the run. Without, every datagram is a run of its own.
   */
  #runs(v: number): number {
    const lens = this.#txIovLens;
    const gsoMax = this.#gsoMax;
    let runs = 0;
    for (let s = 0; s < v; runs++) {
      const len = lens[s];
      let r = 1;
      let bytes = len;
      if (len > 0 && len <= gsoMax) {
        const most = Math.min(GSO_MAX_SEGMENTS, Math.floor(GSO_MAX_BYTES / len), v - s);
        while (r < most && lens[s + r] === len) r++;
        // The kernel lets the last datagram of a run be shorter (a frame's last packet often is).
        if (r < most && lens[s + r] > 0 && lens[s + r] < len) r++;
        bytes = len * (r - 1) + lens[s + r - 1];
      }
      this.#runAt[runs] = s;
      this.#runSegs[runs] = r;
      this.#runBytes[runs] = bytes;
      this.#runSize[runs] = len;
      s += r;
    }
    return runs;
  }

  /**
   * Fills the headers that send every run to every destination of `dest`, a destination at a time (each gets the
   * datagrams in order), flushing whenever the headers run out; returns how many are left to flush.
   */
  #messages(runs: number, dest: FastDestinations): number {
    const u32 = this.#txU32;
    let k = 0;
    for (let j = 0; j < dest.endpoints.length; j++) {
      for (let n = 0; n < runs; n++) {
        if (k === MAX_MMSG) k = this.#flush(k);
        const h = k * MMSGHDR_SIZE;
        const r = this.#runSegs[n];
        put64(u32, h + MSG_NAME, dest.base + j * NAME_STRIDE);
        u32[(h + MSG_NAMELEN) >>> 2] = dest.lengths[j];
        put64(u32, h + MSG_IOV, this.#txBase + this.#txIov + this.#runAt[n] * IOVEC_SIZE);
        u32[(h + MSG_IOVLEN) >>> 2] = r;
        if (r > 1) {
          u32[(h + MSG_CONTROLLEN) >>> 2] = CMSG_U16_SPACE;
          this.#txGsoSize[k * (CMSG_U16_SPACE >>> 1) + (CMSG_DATA >>> 1)] = this.#runSize[n];
        } else u32[(h + MSG_CONTROLLEN) >>> 2] = 0;
        this.#txLens[k] = this.#runBytes[n];
        this.#txSegs[k] = r;
        this.#txDest[k] = j;
        k++;
      }
    }
    return k;
  }

  /** Hands `k` prepared messages to the kernel; returns 0 (headers free again). */
  #flush(k: number): number {
    const dest = this.#txTo!;
    let start = 0;
    while (start < k) {
      const sent = this.#c.sendmmsg(
        this.#fd,
        start === 0 ? this.#tx : this.#tx.subarray(start * MMSGHDR_SIZE),
        k - start,
        MSG_DONTWAIT,
      );
      for (let m = start; m < start + Math.max(0, sent); m++) this.#sent(m, dest);
      start += Math.max(0, sent);
      if (start >= k) break;
      // Message `start` failed. A full buffer will refuse the rest too; any other error is that message's alone.
      const e = this.#errno.getInt32();
      if (e === EAGAIN) {
        for (let m = start; m < k; m++) {
          dest.dropped[this.#txDest[m]] += this.#txSegs[m];
          this.stats.tx_dropped += this.#txSegs[m];
        }
        break;
      }
      if (this.#txSegs[start] > 1) this.#unsegment(start, e, dest);
      else {
        dest.dropped[this.#txDest[start]]++;
        this.stats.errors++;
      }
      start++;
    }
    return 0;
  }

  #sent(m: number, dest: FastDestinations): void {
    this.stats.tx_packets += this.#txSegs[m];
    this.stats.tx_bytes += this.#txLens[m];
    dest.sent[this.#txDest[m]] += this.#txSegs[m];
  }

  /**
   * A GSO message the kernel refused for a reason of its own (`e`): a datagram larger than the path's MTU
   * (EMSGSIZE: later runs of that size or larger go unsegmented), or a socket or route that cannot segment (EIO,
   * EINVAL: GSO stays off for this socket). The message's datagrams then go one by one, so none is lost for it.
   */
  #unsegment(m: number, e: number, dest: FastDestinations): void {
    const size = this.#txGsoSize[m * (CMSG_U16_SPACE >>> 1) + (CMSG_DATA >>> 1)];
    this.#gsoMax = e === EMSGSIZE ? Math.min(this.#gsoMax, size - 1) : 0;
    const u32 = this.#txU32;
    const h = m * MMSGHDR_SIZE;
    const header = this.#tx.subarray(h, h + MMSGHDR_SIZE);
    const iov = (h + MSG_IOV) >>> 2;
    const first = u32[iov] + u32[iov + 1] * TWO32;
    u32[(h + MSG_IOVLEN) >>> 2] = 1;
    u32[(h + MSG_CONTROLLEN) >>> 2] = 0;
    for (let t = 0; t < this.#txSegs[m]; t++) {
      const at = first + t * IOVEC_SIZE;
      put64(u32, h + MSG_IOV, at);
      if (this.#c.sendmmsg(this.#fd, header, 1, MSG_DONTWAIT) === 1) {
        this.stats.tx_packets++;
        this.stats.tx_bytes += u32[(at - this.#txBase + 8) >>> 2];
        dest.sent[this.#txDest[m]]++;
      } else {
        if (this.#errno.getInt32() === EAGAIN) this.stats.tx_dropped++;
        else this.stats.errors++;
        dest.dropped[this.#txDest[m]]++;
      }
    }
  }

  /**
   * Stops receiving and closes the descriptor: close(2), never shutdown(2), so a process the socket was handed to
   * goes on with it untouched (the kernel keeps the socket, and what is queued on it, while any process holds it).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    // An adopted socket: the opener wakes and closes it. (libc is the thread's, kept open: sharedLibc.)
    if (!this.#owner) {
      this.#closed = true;
      return;
    }
    // Wake a receive waiting in another thread; the descriptors are closed only after it has returned.
    this.interrupt();
    this.#closed = true;
    if (this.#waiting) await this.#waiting.catch(() => 0);
    this.#unlist();
    this.#c.close(this.#fd);
    this.#c.close(this.#wake);
  }
}

function describeErrno(code: number): string {
  return ERRNO_TEXT[code] ?? `errno ${code}`;
}
