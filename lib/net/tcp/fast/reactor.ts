/**
 * The Linux fast path for proxied TCP: nonblocking sockets in one epoll set, driven through FFI to libc, as HAProxy
 * drives its own. This file is the reactor: the epoll set, who handles each descriptor, and the loop that waits and
 * dispatches. The listener (./listener.ts), the connector (./connector.ts) and the splice (./splice.ts) register
 * their descriptors here; a connection's bytes move by recv and send from one shared buffer, called straight from the
 * readiness event: no promise, no read op and no timer per chunk, which is what Deno's own sockets cost per request.
 *
 * The reactor (one per isolate) waits on the event loop's thread, in an epoll set that also holds the event loop's
 * own (./loop_probe.ts; either wakes it), while anything comes within BUSY_WAIT_MS; quieter than that, in a blocking
 * epoll_wait run off the main thread while the event loop parks. While events keep coming, the event loop gets a
 * turn when it has I/O of its own and at least every TURN_MS, so timers, health checks and the status API run.
 *
 * Memory: the event array, the shared data buffer and the scratch for sockaddrs and options are slabs owned by the
 * reactor for its whole life (see PLATFORM.md: a typed array whose pointer the kernel holds must not be collected or
 * moved). Pending bytes that a slow peer could not take yet are copied into pooled buffers owned by their connection.
 *
 * Descriptors: a closed fd number can come back from the next accept in the same round of events, so every
 * registration carries a generation and an event for an older generation is ignored.
 */
import { type Clock, systemClock } from "../../../core/clock.ts";
import { yieldToEventLoop } from "../../../core/yield.ts";
import { type HostPort, isIPv4 } from "../../address.ts";
import {
  AF_INET,
  AF_INET6,
  describeErrno,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_DATA_AT,
  EPOLL_EVENT_SIZE,
  EPOLLIN,
  errnoView,
  IPPROTO_TCP,
  type Libc,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  openLibc,
  readSockaddr,
  SO_ERROR,
  SOCK_CLOEXEC,
  SOL_SOCKET,
  TCP_NODELAY,
  writeSockaddr,
} from "../../libc.ts";
import { findEventLoopEpoll } from "./loop_probe.ts";

const MAX_EVENTS = 256;
/**
 * Longest the event loop waits for a turn while events keep coming: under full load, timers (checks, timeouts) run
 * at most this late. The event loop's own I/O (the status API) gets a turn in the round it is seen.
 */
const TURN_MS = 10;
/** How long the blocking wait sleeps when nothing happens (it is also woken through an eventfd). */
const WAIT_MS = 1000;
/**
 * How long a wait on the event loop's own thread may last: timers (not I/O) are late by at most this. Quieter than
 * that, the reactor parks in the event loop and waits on another thread.
 */
const BUSY_WAIT_MS = 2;
/**
 * Microtask turns given to running promise chains before the reactor decides that nothing is ready. A service's
 * clients move by callbacks, not promises (only a PROXY header or a queued client awaits), so two are enough: each
 * empty turn costs an epoll_wait (with 16, the engine made twice HAProxy's epoll_wait calls per connection).
 */
const MICROTASK_ROUNDS = 2;

/**
 * A size_t argument. Deno takes a number too, but only a bigint keeps the call on V8's fast path: a number costs
 * about 300 ns more per call (measured here), far more than making the bigint.
 */
export const usize = (n: number): bigint => BigInt(n);

/** What is told when something must end from outside: its server's signal aborted, or its connection closed. */
export interface Stoppable {
  stop(reason: unknown): void;
}

/**
 * Whoever handles a watched descriptor's readiness: a listener, a pending connect, a splice. An object with a method,
 * not a closure per descriptor: a connection's path allocates as little as it can (what it allocates, the young
 * generation collector copies and promotes while connections are in flight).
 */
export interface Sink {
  ready(fd: number, events: number): void;
}

/** Whoever asked to be called back at the end of the next round (`Reactor.later`). */
export interface Deferred {
  deferred(): void;
}

// Scratch slab layout (bytes): epoll_event at 0, sockaddr at 64 (128 long), its length at 192, an option value at
// 256 and its length at 264, the eventfd counter at 16 and 24, bytes sent at once (sendNow) from 1024.
const ADDR_AT = 64;
const ADDR_LEN_AT = 192;
const OPT_AT = 256;
const OPT_LEN_AT = 264;
const SEND_AT = 1024;
const SEND_MAX = 2048;

/** The reactor behind every fast TCP socket of this isolate; `Reactor.get()` makes it on first use. */
export class Reactor {
  static #instance: Reactor | null | undefined;

  /** The reactor, or null where FFI to libc is not allowed or this is not Linux. */
  static get(): Reactor | null {
    if (Reactor.#instance !== undefined) return Reactor.#instance;
    Reactor.#instance = null;
    const lib = openLibc();
    if (!lib) return null;
    try {
      Reactor.#instance = new Reactor(lib.symbols, systemClock);
    } catch {
      Reactor.#instance = null;
    }
    return Reactor.#instance;
  }

  readonly c: Libc;
  /** The clock of the round time (`now`) and of the loop probe's pauses. */
  readonly clock: Clock;
  readonly #epfd: number;
  readonly #wakeFd: number;
  readonly #events = new Uint8Array(Math.max(4096, MAX_EVENTS * EPOLL_EVENT_SIZE));
  readonly #eventView = new DataView(this.#events.buffer);
  /** The shared buffer every read goes into (as large as the largest `buffer` setting); sent on at once. */
  readonly data = new Uint8Array(1 << 20);
  /** Scratch for epoll_event, sockaddrs, lengths and option values (large, so it never moves). */
  readonly #scratch = new Uint8Array(4096);
  readonly #sv = new DataView(this.#scratch.buffer);
  readonly #ev = this.#scratch.subarray(0, 16);
  /** The scratch sockaddr: written by `writeAddr`, filled by accept4 and getsockname. */
  readonly addr = this.#scratch.subarray(ADDR_AT, ADDR_AT + 128);
  readonly addrLen = this.#scratch.subarray(ADDR_LEN_AT, ADDR_LEN_AT + 8);
  readonly #opt = this.#scratch.subarray(OPT_AT, OPT_AT + 8);
  readonly #optLen = this.#scratch.subarray(OPT_LEN_AT, OPT_LEN_AT + 8);
  readonly #handlers: (Sink | undefined)[] = [];
  readonly #generations: number[] = [];
  #interest: number[] = [];
  /** Descriptors the reactor watches; its loop runs while there is any. */
  #watched = 0;
  /**
   * Sinks to call again next round for a descriptor with input left unread (a reader stops after a few reads so
   * that one busy connection cannot hold up the rest; edge-triggered, the kernel would not report it again).
   * Two pairs of arrays used in turn, so a round allocates nothing.
   */
  #again: Sink[] = [];
  #againFds: number[] = [];
  #running: Sink[] = [];
  #runningFds: number[] = [];
  /**
   * Callbacks asked for during this round (`#later`), and those asked for in the round before, due at the end of this
   * one (`#due`). Two arrays used in turn, so a round allocates nothing.
   */
  #later: Deferred[] = [];
  #due: Deferred[] = [];
  #loop: Promise<void> | null = null;
  #waiting = false;
  /** The epoll set of this thread's event loop (Deno's reactor), inside ours; -1 when it could not be found. */
  #loopFd = -1;
  readonly #loopFound: Promise<void>;
  /**
   * Who waits on each abort signal (a server's): one event listener per signal, not an add and a remove of one per
   * connection (EventTarget's bookkeeping is costly next to a Set's).
   */
  readonly #abortWaiters = new WeakMap<AbortSignal, Set<Stoppable>>();

  constructor(c: Libc, clock: Clock) {
    this.c = c;
    this.clock = clock;
    this.now = clock.now();
    this.#epfd = c.epoll_create1(SOCK_CLOEXEC);
    this.#wakeFd = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#epfd < 0 || this.#wakeFd < 0) {
      throw new Error(`Cannot make an epoll set: ${this.describe(this.errno())}`);
    }
    this.#ctl(EPOLL_CTL_ADD, this.#wakeFd, EPOLLIN, 0);
    this.#loopFound = findEventLoopEpoll(this.#epfd, clock).then((fd) => {
      if (fd >= 0 && this.#ctl(EPOLL_CTL_ADD, fd, EPOLLIN, 0) === 0) this.#loopFd = fd;
    });
  }

  /** Resolves once the event loop's epoll set has been looked for (and, if found, joined). */
  get ready(): Promise<void> {
    return this.#loopFound;
  }

  /** Whether the reactor waits on the event loop's thread when busy (false: it always waits on another thread). */
  get waitsOnEventLoopThread(): boolean {
    return this.#loopFd >= 0;
  }

  /**
   * errno of the last failing call. Where it lives is fixed for the thread, and a reactor never leaves its isolate's
   * thread: the location is asked for once, not per failure.
   */
  errno(): number {
    return (this.#errno ??= errnoView(this.c)).getInt32();
  }
  #errno: Deno.UnsafePointerView | undefined;

  describe(code: number): string {
    return describeErrno(this.c, code);
  }

  /** Tells `waiter` when `signal` aborts; delete it from the returned set once it no longer cares. */
  onAbort(signal: AbortSignal, waiter: Stoppable): Set<Stoppable> {
    let waiters = this.#abortWaiters.get(signal);
    if (!waiters) {
      const set = waiters = new Set();
      this.#abortWaiters.set(signal, set);
      signal.addEventListener("abort", () => {
        for (const w of [...set]) w.stop(signal.reason);
        set.clear();
      }, { once: true });
    }
    waiters.add(waiter);
    return waiters;
  }

  // --- registration and the loop ---------------------------------------------------------------------------

  #ctl(op: number, fd: number, events: number, generation: number): number {
    this.#sv.setUint32(0, events, true);
    this.#sv.setUint32(EPOLL_DATA_AT, fd, true);
    this.#sv.setUint32(EPOLL_DATA_AT + 4, generation, true);
    return this.c.epoll_ctl(this.#epfd, op, fd, this.#ev);
  }

  /** Starts watching `fd` for `events`, telling `handler` what happened. */
  watch(fd: number, events: number, handler: Sink): void {
    const generation = ((this.#generations[fd] ?? 0) + 1) >>> 0;
    this.#generations[fd] = generation;
    this.#handlers[fd] = handler;
    this.#interest[fd] = events;
    this.#ctl(EPOLL_CTL_ADD, fd, events, generation);
    this.#watched++;
    this.#loop ??= this.#run();
  }

  /** Hands a watched `fd`'s readiness to `sink` from now on. */
  handle(fd: number, sink: Sink): void {
    if (this.#handlers[fd] !== undefined) this.#handlers[fd] = sink;
  }

  /** Hands `fd`'s readiness to `sink` and watches it for `events` (registering it when it is not yet watched). */
  adopt(fd: number, sink: Sink, events: number): void {
    if (this.#handlers[fd] === undefined) this.watch(fd, events, sink);
    else {
      this.#handlers[fd] = sink;
      this.interest(fd, events);
    }
  }

  /** Calls `sink.ready(fd, EPOLLIN)` next round: `fd` has input left that no new event will report. */
  again(fd: number, sink: Sink): void {
    this.#again.push(sink);
    this.#againFds.push(fd);
  }

  /**
   * Calls `d.deferred()` at the end of the next round: after what the kernel reports by then has been handled (a
   * splice lets a peer's close that is on its way arrive before it half-closes the other side). That round does not
   * wait for events, so the delay is one look at the epoll set at most.
   */
  later(d: Deferred): void {
    this.#later.push(d);
    // Asked from outside a round (a promise's continuation) while the loop sleeps off the main thread: wake it, so
    // "the next round" is not up to WAIT_MS away.
    if (this.#waiting && this.#later.length === 1) this.#wake();
  }

  #runDue(): void {
    const due = this.#due;
    for (let i = 0; i < due.length; i++) due[i].deferred();
    due.length = 0;
  }

  #rerun(): void {
    const sinks = this.#again, fds = this.#againFds;
    this.#again = this.#running;
    this.#againFds = this.#runningFds;
    for (let i = 0; i < sinks.length; i++) sinks[i].ready(fds[i], EPOLLIN);
    sinks.length = fds.length = 0;
    this.#running = sinks;
    this.#runningFds = fds;
  }

  /** Changes what `fd` is watched for (nothing when it is already that). */
  interest(fd: number, events: number): void {
    if (this.#interest[fd] === events || this.#handlers[fd] === undefined) return;
    this.#interest[fd] = events;
    this.#ctl(EPOLL_CTL_MOD, fd, events, this.#generations[fd]);
  }

  /**
   * Stops watching and closes `fd`. Closing takes it out of the epoll set only when no other descriptor refers to the
   * socket: a `shared` one (a listener another process also holds, after a takeover) is taken out first, or its
   * events would go on arriving for a number this process no longer has.
   */
  release(fd: number, shared = false): void {
    if (this.#handlers[fd] !== undefined) {
      if (shared) this.#ctl(EPOLL_CTL_DEL, fd, 0, 0);
      this.#handlers[fd] = undefined;
      this.#watched--;
      if (this.#watched === 0 && this.#waiting) this.#wake();
    }
    this.c.close(fd);
  }

  #wake(): void {
    this.#sv.setBigUint64(16, 1n, true);
    this.c.write(this.#wakeFd, this.#scratch.subarray(16, 24), usize(8));
  }

  /** Resolves once nothing is watched any more and the loop has ended (tests and shutdown wait for it). */
  async idle(): Promise<void> {
    while (this.#loop) await this.#loop;
  }

  /**
   * When the current round began (the clock read once per round): splices on the reactor's clock stamp their
   * activity with it instead of reading the clock per read.
   */
  now: number;

  async #run(): Promise<void> {
    const c = this.c;
    /** When the event loop last had a turn. */
    let turnAt = this.now;
    try {
      while (this.#watched > 0) {
        // What the last round's handlers resolved (an accepted client, a finished connect) runs now, so the
        // sockets it opens are in the set before the next look: a flush of microtasks, not a thread hop.
        await null;
        // What was asked for last round (input left unread, callbacks deferred) becomes due: this round must not wait.
        const due = this.#due;
        this.#due = this.#later;
        this.#later = due;
        const rerun = this.#again.length > 0 || this.#due.length > 0;
        let n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, 0);
        // Nothing ready: first let promise chains that are still running (a PROXY header written, a queued client
        // let in) finish their steps, which may open or ready a socket.
        for (let k = 0; k < MICROTASK_ROUNDS && n === 0 && !rerun; k++) {
          await null;
          n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, 0);
        }
        // Callbacks asked for meanwhile (by the promise chains just run) are due next round: no waiting either.
        const asked = this.#later.length > 0;
        if (n === 0 && this.#loopFd >= 0 && !rerun && !asked) {
          // Wait here, on the event loop's thread, for our sockets or for the event loop's own I/O (its epoll set is
          // in ours): no thread hop between an event and its handler.
          n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, BUSY_WAIT_MS);
        }
        const parked = n <= 0 && !rerun && !asked;
        if (parked) {
          // Quiet: park in the event loop (timers run), wait on another thread.
          this.#waiting = true;
          n = await c.epoll_wait_blocking(this.#epfd, this.#events, MAX_EVENTS, WAIT_MS);
          this.#waiting = false;
        }
        const now = this.now = this.clock.now();
        if (parked) turnAt = now;
        let loopIo = false;
        for (let i = 0; i < n; i++) {
          const at = i * EPOLL_EVENT_SIZE;
          const events = this.#eventView.getUint32(at, true);
          const fd = this.#eventView.getUint32(at + EPOLL_DATA_AT, true);
          if (fd === this.#wakeFd) {
            c.read(this.#wakeFd, this.#scratch.subarray(24, 32), usize(8));
            continue;
          }
          if (fd === this.#loopFd) {
            loopIo = true;
            continue;
          }
          const handler = this.#handlers[fd];
          if (handler && this.#generations[fd] === this.#eventView.getUint32(at + EPOLL_DATA_AT + 4, true)) {
            handler.ready(fd, events);
          }
        }
        if (this.#again.length > 0) this.#rerun();
        if (this.#due.length > 0) this.#runDue();
        // The event loop has I/O of its own (the status API, a check, a worker's message), or has waited TURN_MS
        // while ours kept coming: it gets a turn now.
        if (loopIo || now - turnAt >= TURN_MS) {
          await yieldToEventLoop();
          turnAt = now;
        }
      }
    } finally {
      this.#loop = null;
    }
  }

  // --- addresses and options ---------------------------------------------------------------------------------

  /** Writes `addr` into the scratch sockaddr (`this.addr`); returns [family, length]. */
  writeAddr(addr: HostPort): [number, number] {
    const v6 = !isIPv4(addr.host);
    return [v6 ? AF_INET6 : AF_INET, writeSockaddr(this.#sv, ADDR_AT, addr, v6)];
  }

  /** The address in the scratch sockaddr (after accept4 or getsockname). */
  readAddr(): HostPort {
    return readSockaddr(this.#sv, ADDR_AT);
  }

  /** Sets the scratch sockaddr length to its room, as accept4 and getsockname want it. */
  resetAddrLen(): void {
    this.#sv.setUint32(ADDR_LEN_AT, 128, true);
  }

  /** Sends all of `bytes` (at most 2 KiB) at once, from the scratch slab, or throws. */
  sendNow(fd: number, bytes: Uint8Array): void {
    if (bytes.length > SEND_MAX) {
      throw new Error(`Cannot send ${bytes.length} bytes at once: at most ${SEND_MAX}`);
    }
    const area = this.#scratch.subarray(SEND_AT, SEND_AT + bytes.length);
    area.set(bytes);
    const n = this.c.send(fd, area, usize(bytes.length), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n !== bytes.length) {
      throw new Error(n < 0 ? this.describe(this.errno()) : "the socket took only part");
    }
  }

  /** The pending error of a socket (SO_ERROR): its errno, 0 when none. */
  socketErrno(fd: number): number {
    this.#sv.setUint32(OPT_LEN_AT, 4, true);
    this.c.getsockopt(fd, SOL_SOCKET, SO_ERROR, this.#opt, this.#optLen);
    return this.#sv.getInt32(OPT_AT, true);
  }

  /** The pending error of a socket (SO_ERROR), as text. */
  socketError(fd: number): string {
    const code = this.socketErrno(fd);
    return code ? this.describe(code) : "connection failed";
  }

  localAddress(fd: number): HostPort {
    this.resetAddrLen();
    this.c.getsockname(fd, this.addr, this.addrLen);
    return this.readAddr();
  }

  /** Whether Nagle's algorithm is off on `fd` (TCP_NODELAY): small writes leave at once. */
  noDelay(fd: number): boolean {
    this.#sv.setUint32(OPT_LEN_AT, 4, true);
    return this.c.getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.#opt, this.#optLen) === 0 &&
      this.#sv.getInt32(OPT_AT, true) !== 0;
  }

  setInt(fd: number, level: number, name: number, value: number): number {
    this.#sv.setInt32(OPT_AT, value, true);
    return this.c.setsockopt(fd, level, name, this.#opt, 4);
  }
}
