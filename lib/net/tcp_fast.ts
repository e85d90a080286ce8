/**
 * The Linux fast path for proxied TCP: nonblocking sockets in one epoll set, driven through FFI to libc, as HAProxy
 * drives its own. A connection's bytes move by recv and send from one shared buffer, called straight from the
 * readiness event: no promise, no read op and no timer per chunk, which is what Deno's own sockets cost per request.
 *
 * The engine (one per isolate) waits on the event loop's thread, in an epoll set that also holds the event loop's
 * own (so either wakes it), while anything comes within BUSY_WAIT_MS; quieter than that, in a blocking epoll_wait
 * run off the main thread while the event loop parks. While events keep coming, the event loop gets a turn when it
 * has I/O of its own and at least every TURN_MS, so timers, health checks and the status API run.
 *
 * Memory: the event array, the shared data buffer and the scratch for sockaddrs and options are slabs owned by the
 * engine for its whole life (see PLATFORM.md: a typed array whose pointer the kernel holds must not be collected or
 * moved). Pending bytes that a slow peer could not take yet are copied into pooled buffers owned by their connection.
 *
 * Descriptors: a closed fd number can come back from the next accept in the same round of events, so every
 * registration carries a generation and an event for an older generation is ignored.
 */
import type { Clock } from "../core/clock.ts";
import { systemClock } from "../core/clock.ts";
import { type Deadline, Deadlines } from "../core/deadlines.ts";
import { StartError } from "../core/errors.ts";
import { yieldToEventLoop } from "../core/yield.ts";
import { formatHostPort, type HostPort, isIPv4, isIPv6 } from "./address.ts";
import {
  AF_INET,
  AF_INET6,
  EAGAIN,
  EINTR,
  errnoView,
  MSG_DONTWAIT,
  readSockaddr,
  SOCK_CLOEXEC,
  SOL_SOCKET,
  writeSockaddr,
} from "./libc.ts";
import type { PipeEndReason, PipeOptions, PipeResult } from "../scheduler/pipe.ts";
import { PIPE_DEFAULTS } from "../scheduler/pipe.ts";

const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SO_REUSEADDR = 2;
const SO_ERROR = 4;
const SO_REUSEPORT = 15;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const MSG_NOSIGNAL = 0x4000;
const SHUT_WR = 1;
const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;
const EPOLLERR = 0x8;
const EPOLLHUP = 0x10;
const EPOLLRDHUP = 0x2000;
const EPOLLET = 0x80000000;
/**
 * What a connection's descriptor is watched for, once, for its whole life: edge-triggered input, output and the
 * peer's FIN. A level-triggered set would need its interest changed as a connection's state changes (an epoll_ctl
 * call each time); edge-triggered, a reader that has not drained its input remembers so itself (Direction.pending).
 */
const STREAM_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_MOD = 3;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const EINPROGRESS = 115;
const ECONNABORTED = 103;
/** struct epoll_event is packed on x86_64 ({u32 events; u64 data} in 12 bytes), natural elsewhere (16). */
const EVENT_SIZE = Deno.build.arch === "x86_64" ? 12 : 16;
/** Where the 64-bit data (fd, then generation) starts in an epoll_event. */
const DATA_AT = EVENT_SIZE === 12 ? 4 : 8;
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
 * that, the engine parks in the event loop and waits on another thread.
 */
const BUSY_WAIT_MS = 2;
/**
 * Microtask turns given to running promise chains before the engine decides that nothing is ready. A service's
 * clients move by callbacks, not promises (only a PROXY header or a queued client awaits), so two are enough: each
 * empty turn costs an epoll_wait (with 16, the engine made twice HAProxy's epoll_wait calls per connection).
 */
const MICROTASK_ROUNDS = 2;
/** Most connections taken per readiness event of a listener, and reads per readiness event of a connection. */
const ACCEPT_BURST = 64;
const READ_BURST = 4;
const LISTEN_BACKLOG = 4096;
/** How long accepting pauses after a failure other than "no client waiting" (out of descriptors). */
const ACCEPT_PAUSE_MS = 100;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // ssize_t results read as i32: every length asked for fits, and -1 stays -1.
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  epoll_wait_blocking: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

type TcpLibc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/**
 * A size_t argument. Deno takes a number too, but only a bigint keeps the call on V8's fast path: a number costs
 * about 300 ns more per call (measured here), far more than making the bigint.
 */
const usize = (n: number): bigint => BigInt(n);

/** What is told when a splice must end from outside: its server's signal aborted, or one of its connections closed. */
interface Stoppable {
  stop(reason: unknown): void;
}

/**
 * Splices waiting on each abort signal (a server's): one event listener per signal, not an add and a remove of one
 * per connection (EventTarget's bookkeeping is costly next to a Set's).
 */
const abortWaiters = new WeakMap<AbortSignal, Set<Stoppable>>();

function onAbortOf(signal: AbortSignal, waiter: Stoppable): Set<Stoppable> {
  let waiters = abortWaiters.get(signal);
  if (!waiters) {
    const set = waiters = new Set();
    abortWaiters.set(signal, set);
    signal.addEventListener("abort", () => {
      for (const w of [...set]) w.stop(signal.reason);
      set.clear();
    }, { once: true });
  }
  waiters.add(waiter);
  return waiters;
}

/**
 * Whoever handles a watched descriptor's readiness: a listener, a pending connect, a splice. An object with a method,
 * not a closure per descriptor: a connection's path allocates as little as it can (what it allocates, the young
 * generation collector copies and promotes while connections are in flight).
 */
interface Sink {
  ready(fd: number, events: number): void;
}

/** A connection of the fast path: a nonblocking descriptor the engine watches. Closing twice is harmless. */
export class FastConn implements Sink {
  #closed = false;
  #local: HostPort | null = null;
  /** Told when the connection is closed from outside while a splice owns it (the service stopping). */
  owner: Stoppable | null = null;
  /**
   * Readiness seen between a connect's end and a splice taking the connection (edge-triggered events are reported
   * once: the splice reads them from here).
   */
  events = 0;
  constructor(readonly engine: TcpEngine, readonly fd: number, readonly remote: HostPort) {}

  /** Keeps the readiness the engine reports while no splice owns the connection yet. */
  ready(_fd: number, events: number): void {
    this.events |= events;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The local address (asked of the kernel once, when first wanted: only PROXY headers need it). */
  get local(): HostPort {
    return this.#local ??= this.engine.localAddress(this.fd);
  }

  /** Sends all of `bytes` now or fails: for a few bytes (a PROXY header) on a connection just made. */
  writeNow(bytes: Uint8Array): void {
    this.engine.sendNow(this.fd, bytes);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const owner = this.owner;
    this.owner = null;
    this.engine.release(this.fd);
    owner?.stop(new Error("closed"));
  }
}

export interface FastListener {
  readonly addr: HostPort;
  /** The next connection, or null once closed. */
  accept(): Promise<FastConn | null>;
  /**
   * Hands every connection to `accepted` as it is taken from the kernel, with no promise per connection (instead of
   * `accept`, not beside it); resolves once closed.
   */
  serve(accepted: (conn: FastConn) => void, failed?: (error: Error) => void): Promise<void>;
  close(): void;
}

/** A splice takes what the portable pipe takes, but for live counters (it reports its totals at the end). */
export type SpliceOptions = Omit<PipeOptions, "counters">;

/**
 * The epoll sets of this process that watch the UDP socket bound to 127.0.0.1:`port`: the socket's inode from
 * /proc/net/udp, the descriptor that links to it, then every descriptor whose fdinfo has it as a target ("tfd: N").
 * Deno lets a program read /proc/self only with --allow-all, so a shell reads it (the agent reads /proc the same way).
 */
async function watchersOfUdpPort(port: number): Promise<number[]> {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const script = `cd /proc/${Deno.pid} || exit 1
inode=$(awk '$2 == "0100007F:${hex}" { print $10; exit }' net/udp)
[ -n "$inode" ] || exit 0
sock=
for f in fd/*; do [ "$(readlink "$f")" = "socket:[$inode]" ] && sock=\${f#fd/}; done
[ -n "$sock" ] || exit 0
for f in fdinfo/*; do grep -q "^tfd: *$sock " "$f" 2>/dev/null && echo "\${f#fdinfo/}"; done
exit 0`;
  const out = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => /^\d+$/.test(l)).map(Number);
}

/**
 * The descriptor of the epoll set this thread's event loop waits in, or -1. Found by opening a Deno socket, letting
 * the event loop register it (on its first pending receive), and looking for the epoll set that watches that very
 * socket. Worker threads have sets of their own, which do not; nor does `own` (the engine's set), which may be
 * watching sockets opened meanwhile (a listener made right after the engine).
 */
async function findReactor(own: number): Promise<number> {
  try {
    const probe = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    const pending = probe.receive().catch(() => null);
    try {
      for (let attempt = 0; attempt < 10; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        const found = (await watchersOfUdpPort(port)).filter((fd) => fd !== own);
        if (found.length) return found[0];
      }
    } finally {
      probe.close();
      await pending;
    }
  } catch {
    // No /proc, no shell, or not allowed to run one: the engine waits on another thread when quiet.
  }
  return -1;
}

/** Why a connect to `addr` failed, as the service shows it (the kernel's reason, or "timed out"). */
function connectFailure(addr: HostPort, reason: string): Error {
  return new Error(`Cannot connect to ${formatHostPort(addr)}: ${reason}`);
}

/** Who is told how a connect went (an object, not a pair of closures per connect). */
export interface ConnectTarget {
  connected(conn: FastConn): void;
  connectFailed(error: Error): void;
}

/** Who is told that a splice has ended, with its totals. */
export interface SpliceTarget {
  spliced(result: PipeResult): void;
}

/** A connect in progress: its descriptor's first EPOLLOUT says how it went. */
class Connecting implements Sink {
  #timer: Deadline | undefined;
  #deadlines: Deadlines | undefined;
  constructor(readonly conn: FastConn, readonly target: ConnectTarget) {}

  expireIn(deadlines: Deadlines, ms: number): void {
    this.#deadlines = deadlines;
    this.#timer = deadlines.add(ms, () => {
      this.conn.close();
      this.target.connectFailed(connectFailure(this.conn.remote, "timed out"));
    });
  }

  ready(fd: number, events: number): void {
    if (this.#timer !== undefined) this.#deadlines!.cancel(this.#timer);
    const engine = this.conn.engine;
    if (!(events & (EPOLLERR | EPOLLHUP))) {
      // Writable and no error: connected. Until a splice takes it, the connection keeps what is reported.
      engine.handle(fd, this.conn);
      this.conn.events = events;
      this.target.connected(this.conn);
    } else {
      const reason = engine.socketError(fd);
      this.conn.close();
      this.target.connectFailed(connectFailure(this.conn.remote, reason));
    }
  }
}

/** The engine behind every fast TCP socket of this isolate; `TcpEngine.get()` makes it on first use. */
export class TcpEngine {
  static #instance: TcpEngine | null | undefined;

  /** The engine, or null where FFI to libc is not allowed or this is not Linux. */
  static get(): TcpEngine | null {
    if (TcpEngine.#instance !== undefined) return TcpEngine.#instance;
    TcpEngine.#instance = null;
    if (Deno.build.os !== "linux") return null;
    try {
      if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
      TcpEngine.#instance = new TcpEngine(Deno.dlopen("libc.so.6", SYMBOLS));
    } catch {
      TcpEngine.#instance = null;
    }
    return TcpEngine.#instance;
  }

  readonly c: TcpLibc;
  readonly #epfd: number;
  readonly #wakeFd: number;
  readonly #events = new Uint8Array(Math.max(4096, MAX_EVENTS * EVENT_SIZE));
  readonly #eventView = new DataView(this.#events.buffer);
  /** The shared buffer every read goes into (as large as the largest `buffer` setting); sent on at once. */
  readonly data = new Uint8Array(1 << 20);
  /** Scratch for epoll_event, sockaddrs, lengths and option values (large, so it never moves). */
  readonly #scratch = new Uint8Array(4096);
  readonly #sv = new DataView(this.#scratch.buffer);
  readonly #ev = this.#scratch.subarray(0, 16);
  readonly #addr = this.#scratch.subarray(64, 192);
  readonly #addrLen = this.#scratch.subarray(192, 200);
  readonly #opt = this.#scratch.subarray(256, 264);
  readonly #optLen = this.#scratch.subarray(264, 272);
  /** Encoded sockaddrs of the addresses connected to (servers' addresses are long-lived objects). */
  readonly #encoded = new WeakMap<HostPort, { family: number; len: number; bytes: Uint8Array }>();
  readonly #handlers: (Sink | undefined)[] = [];
  readonly #generations: number[] = [];
  #interest: number[] = [];
  /** Descriptors the engine watches; its loop runs while there is any. */
  #watched = 0;
  /**
   * Sinks to call again next round for a descriptor with input left unread (a reader stops after READ_BURST reads
   * so that one busy connection cannot hold up the rest; edge-triggered, the kernel would not report it again).
   * Two pairs of arrays used in turn, so a round allocates nothing.
   */
  #again: Sink[] = [];
  #againFds: number[] = [];
  #running: Sink[] = [];
  #runningFds: number[] = [];
  #loop: Promise<void> | null = null;
  #waiting = false;
  /** The epoll set of this thread's event loop (Deno's reactor), inside ours; -1 when it could not be found. */
  #reactorFd = -1;
  readonly #reactorFound: Promise<void>;

  private constructor(lib: Deno.DynamicLibrary<typeof SYMBOLS>) {
    this.c = lib.symbols;
    this.#epfd = this.c.epoll_create1(SOCK_CLOEXEC);
    this.#wakeFd = this.c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#epfd < 0 || this.#wakeFd < 0) throw new Error(`epoll: ${this.describe(this.errno())}`);
    this.#ctl(EPOLL_CTL_ADD, this.#wakeFd, EPOLLIN, 0);
    this.#reactorFound = findReactor(this.#epfd).then((fd) => {
      if (fd >= 0 && this.#ctl(EPOLL_CTL_ADD, fd, EPOLLIN, 0) === 0) this.#reactorFd = fd;
    });
  }

  /** Resolves once the event loop's epoll set has been looked for (and, if found, joined). */
  get ready(): Promise<void> {
    return this.#reactorFound;
  }

  /** Whether the engine waits on the event loop's thread when busy (false: it always waits on another thread). */
  get waitsOnEventLoopThread(): boolean {
    return this.#reactorFd >= 0;
  }

  /**
   * errno of the last failing call. Where it lives is fixed for the thread, and an engine never leaves its isolate's
   * thread: the location is asked for once, not per failure.
   */
  errno(): number {
    return (this.#errno ??= errnoView(this.c)).getInt32();
  }
  #errno: Deno.UnsafePointerView | undefined;

  describe(code: number): string {
    const p = this.c.strerror(code);
    return p ? Deno.UnsafePointerView.getCString(p).toLowerCase() : `errno ${code}`;
  }

  // --- registration and the loop ---------------------------------------------------------------------------

  #ctl(op: number, fd: number, events: number, generation: number): number {
    this.#sv.setUint32(0, events, true);
    this.#sv.setUint32(DATA_AT, fd, true);
    this.#sv.setUint32(DATA_AT + 4, generation, true);
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

  /** Stops watching and closes `fd` (closing takes it out of the epoll set: no separate call). */
  release(fd: number): void {
    if (this.#handlers[fd] !== undefined) {
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
   * When the current round began (Date.now, read once per round): splices on the system clock stamp their activity
   * with it instead of reading the clock per read.
   */
  now = Date.now();

  async #run(): Promise<void> {
    const c = this.c;
    /** When the event loop last had a turn. */
    let turnAt = this.now;
    try {
      while (this.#watched > 0) {
        // What the last round's handlers resolved (an accepted client, a finished connect) runs now, so the
        // sockets it opens are in the set before the next look: a flush of microtasks, not a thread hop.
        await null;
        // Input left unread last round: this round must not wait.
        const rerun = this.#again.length > 0;
        let n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, 0);
        // Nothing ready: first let promise chains that are still running (a PROXY header written, a queued client
        // let in) finish their steps, which may open or ready a socket.
        for (let k = 0; k < MICROTASK_ROUNDS && n === 0 && !rerun; k++) {
          await null;
          n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, 0);
        }
        if (n === 0 && this.#reactorFd >= 0 && !rerun) {
          // Wait here, on the event loop's thread, for our sockets or for the event loop's own I/O (the reactor's
          // epoll is in our set): no thread hop between an event and its handler.
          n = c.epoll_wait(this.#epfd, this.#events, MAX_EVENTS, BUSY_WAIT_MS);
        }
        const parked = n <= 0 && !rerun;
        if (parked) {
          // Quiet: park in the event loop (timers run), wait on another thread.
          this.#waiting = true;
          n = await c.epoll_wait_blocking(this.#epfd, this.#events, MAX_EVENTS, WAIT_MS);
          this.#waiting = false;
        }
        const now = this.now = Date.now();
        if (parked) turnAt = now;
        let reactor = false;
        for (let i = 0; i < n; i++) {
          const at = i * EVENT_SIZE;
          const events = this.#eventView.getUint32(at, true);
          const fd = this.#eventView.getUint32(at + DATA_AT, true);
          if (fd === this.#wakeFd) {
            c.read(this.#wakeFd, this.#scratch.subarray(24, 32), usize(8));
            continue;
          }
          if (fd === this.#reactorFd) {
            reactor = true;
            continue;
          }
          const handler = this.#handlers[fd];
          if (handler && this.#generations[fd] === this.#eventView.getUint32(at + DATA_AT + 4, true)) {
            handler.ready(fd, events);
          }
        }
        if (rerun) this.#rerun();
        // The event loop has I/O of its own (the status API, a check, a worker's message), or has waited TURN_MS
        // while ours kept coming: it gets a turn now.
        if (reactor || now - turnAt >= TURN_MS) {
          await yieldToEventLoop();
          turnAt = now;
        }
      }
    } finally {
      this.#loop = null;
    }
  }

  // --- addresses ---------------------------------------------------------------------------------------------

  /** Writes `addr` into the scratch sockaddr; returns [family, length]. */
  #sockaddr(addr: HostPort): [number, number] {
    const v6 = !isIPv4(addr.host);
    return [v6 ? AF_INET6 : AF_INET, writeSockaddr(this.#sv, 64, addr, v6)];
  }

  #readSockaddr(): HostPort {
    return readSockaddr(this.#sv, 64);
  }

  /** Sends all of `bytes` (at most 2 KiB) at once, from the scratch slab, or throws. */
  sendNow(fd: number, bytes: Uint8Array): void {
    if (bytes.length > 2048) throw new Error("sendNow takes at most 2048 bytes");
    const area = this.#scratch.subarray(1024, 1024 + bytes.length);
    area.set(bytes);
    const n = this.c.send(fd, area, usize(bytes.length), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n !== bytes.length) {
      throw new Error(n < 0 ? this.describe(this.errno()) : "the socket took only part");
    }
  }

  /** The pending error of a socket (SO_ERROR), as text. */
  socketError(fd: number): string {
    this.#sv.setUint32(264, 4, true);
    this.c.getsockopt(fd, SOL_SOCKET, SO_ERROR, this.#opt, this.#optLen);
    const code = this.#sv.getInt32(256, true);
    return code ? this.describe(code) : "connection failed";
  }

  localAddress(fd: number): HostPort {
    this.#sv.setUint32(192, 128, true);
    this.c.getsockname(fd, this.#addr, this.#addrLen);
    return this.#readSockaddr();
  }

  /** Whether Nagle's algorithm is off on `conn` (TCP_NODELAY): small writes leave at once. */
  noDelay(conn: FastConn): boolean {
    this.#sv.setUint32(264, 4, true);
    return this.c.getsockopt(conn.fd, IPPROTO_TCP, TCP_NODELAY, this.#opt, this.#optLen) === 0 &&
      this.#sv.getInt32(256, true) !== 0;
  }

  #setInt(fd: number, level: number, name: number, value: number): number {
    this.#sv.setInt32(256, value, true);
    return this.c.setsockopt(fd, level, name, this.#opt, 4);
  }

  // --- listening and connecting -----------------------------------------------------------------------------

  /** Listens on `addr` (SO_REUSEPORT when asked); failures throw StartError naming the address. */
  listen(addr: HostPort, reusePort = false): FastListener {
    const where = `tcp ${formatHostPort(addr)}`;
    if (!isIPv4(addr.host) && !isIPv6(addr.host)) {
      throw new StartError(`Cannot listen on ${where}: not an IP address`);
    }
    const c = this.c;
    const [family, len] = this.#sockaddr(addr);
    const fd = c.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new StartError(`Cannot listen on ${where}: ${this.describe(this.errno())}`);
    this.#setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (reusePort) this.#setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    // Linux hands this to every accepted socket: one call per listener instead of one per connection.
    this.#setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    this.#sockaddr(addr);
    if (c.bind(fd, this.#addr, len) !== 0 || c.listen(fd, LISTEN_BACKLOG) !== 0) {
      const reason = this.describe(this.errno());
      c.close(fd);
      throw new StartError(`Cannot listen on ${where}: ${reason}`);
    }
    const bound = this.localAddress(fd);
    const waiters: ((conn: FastConn | null) => void)[] = [];
    let serving: ((conn: FastConn) => void) | null = null;
    let failing: ((error: Error) => void) | undefined;
    let served: (() => void) | null = null;
    let closed = false;
    // Up to ACCEPT_BURST connections wait here for accept(); beyond that the listener is not watched, and clients
    // wait in the kernel's queue.
    const ready: FastConn[] = [];
    let registered = false;
    let paused = false;
    const want = () => {
      if (registered && !closed && !paused) this.interest(fd, ready.length < ACCEPT_BURST ? EPOLLIN : 0);
    };
    const onReady = () => {
      // At most ACCEPT_BURST per event, so one busy listener cannot hold up every other socket's events (the listener
      // is level-triggered: what is left is reported again next round).
      for (let k = 0; k < ACCEPT_BURST && ready.length < ACCEPT_BURST; k++) {
        this.#sv.setUint32(192, 128, true);
        const cfd = c.accept4(fd, this.#addr, this.#addrLen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
          const e = this.errno();
          if (e === EINTR || e === ECONNABORTED) continue;
          if (e !== EAGAIN) {
            // Out of descriptors or memory: the queue stays readable, so pause instead of spinning on it.
            failing?.(new Error(`accept on ${where}: ${this.describe(e)}`));
            paused = true;
            this.interest(fd, 0);
            setTimeout(() => {
              paused = false;
              want();
            }, ACCEPT_PAUSE_MS);
          }
          break;
        }
        const conn = new FastConn(this, cfd, this.#readSockaddr());
        if (serving) {
          serving(conn);
          continue;
        }
        const waiter = waiters.shift();
        if (waiter) waiter(conn);
        else ready.push(conn);
      }
      want();
    };
    const register = () => {
      if (registered) return;
      registered = true;
      this.watch(fd, EPOLLIN, { ready: onReady });
    };
    return {
      addr: bound,
      accept: (): Promise<FastConn | null> => {
        if (closed) return Promise.resolve(null);
        const conn = ready.shift();
        if (conn) {
          want();
          return Promise.resolve(conn);
        }
        const p = new Promise<FastConn | null>((resolve) => waiters.push(resolve));
        register();
        return p;
      },
      serve: (accepted: (conn: FastConn) => void, failed?: (error: Error) => void): Promise<void> => {
        if (closed) return Promise.resolve();
        serving = accepted;
        failing = failed;
        for (const conn of ready.splice(0)) accepted(conn);
        const p = new Promise<void>((resolve) => served = resolve);
        register();
        return p;
      },
      close: () => {
        if (closed) return;
        closed = true;
        this.release(fd);
        for (const conn of ready.splice(0)) conn.close();
        for (const w of waiters.splice(0)) w(null);
        served?.();
      },
    };
  }

  /**
   * Connects to `addr` without blocking; rejects with an Error whose message is the kernel's reason ("connection
   * refused") or "timed out" after `timeoutMs` on `clock`.
   */
  connect(addr: HostPort, timeoutMs = 0, clock: Clock = systemClock): Promise<FastConn> {
    return new Promise((resolve, reject) =>
      this.connectTo(addr, timeoutMs, clock, { connected: resolve, connectFailed: reject })
    );
  }

  /**
   * `connect` for a caller that keeps no promise per connection: tells `target` how it went, at once when the kernel
   * can say at once (a failure before any packet left), else from the descriptor's first readiness.
   */
  connectTo(addr: HostPort, timeoutMs: number, clock: Clock, target: ConnectTarget): void {
    const c = this.c;
    // A server's address is the same object for every connection: its sockaddr is encoded once.
    let sa = this.#encoded.get(addr);
    if (!sa) {
      const [family, len] = this.#sockaddr(addr);
      sa = { family, len, bytes: this.#addr.slice(0, len) };
      this.#encoded.set(addr, sa);
    }
    const { family, len } = sa;
    const fd = c.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return target.connectFailed(connectFailure(addr, this.describe(this.errno())));
    this.#setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    this.#addr.set(sa.bytes);
    if (c.connect(fd, this.#addr, len) === 0) return target.connected(new FastConn(this, fd, addr));
    const e = this.errno();
    if (e !== EINPROGRESS) {
      c.close(fd);
      return target.connectFailed(connectFailure(addr, this.describe(e)));
    }
    const pending = new Connecting(new FastConn(this, fd, addr), target);
    this.watch(fd, STREAM_EVENTS, pending);
    if (timeoutMs > 0) pending.expireIn(Deadlines.of(clock), timeoutMs);
  }

  // --- splicing -----------------------------------------------------------------------------------------------

  /**
   * Relays between `a` (client) and `b` (server) until both directions end, then closes both; never rejects.
   * The same contract as lib/scheduler/pipe.ts: one side's EOF half-closes the other and the reverse direction runs
   * on; a failure on either side, the idle timeout or the signal closes both.
   */
  splice(a: FastConn, b: FastConn, options: SpliceOptions = {}): Promise<PipeResult> {
    return new Promise((resolve) => this.spliceTo(a, b, options, { spliced: resolve }));
  }

  /** `splice` for a caller that keeps no promise per connection: `target` is told the result at the end. */
  spliceTo(a: FastConn, b: FastConn, options: SpliceOptions, target: SpliceTarget): void {
    new Splice(this, a, b, options, target);
  }
}

/** One direction of a splice: bytes read from `src` are sent to `dst`; what `dst` could not take waits in `held`. */
class Direction {
  held: Uint8Array | null = null;
  off = 0;
  end = 0;
  eof = false;
  bytes = 0;
  /** `src` may have input not read yet: it was reported, and no read has found it empty since. */
  pending = false;
  /**
   * `src`'s peer has sent its FIN (EPOLLRDHUP): a short read no longer means its input is drained, since the end
   * may sit behind the bytes just read, and no new event would tell.
   */
  finSeen = false;
  constructor(readonly src: FastConn, readonly dst: FastConn) {}
}

/** The relaying of one client connection `a` and its server connection `b` (TcpEngine.splice). */
class Splice implements Sink, Stoppable {
  readonly #engine: TcpEngine;
  readonly #c: TcpLibc;
  readonly #a: FastConn;
  readonly #b: FastConn;
  readonly #up: Direction;
  readonly #down: Direction;
  readonly #pool: SpliceOptions["pool"];
  readonly #clock: Clock;
  /** On the system clock, activity is stamped with the engine's round time (one clock read per round, not per read). */
  readonly #coarse: boolean;
  readonly #deadlines: Deadlines;
  readonly #idleMs: number;
  /** Bytes a read takes at most: one pool buffer's worth, so whatever the far side cannot take yet fits in one. */
  readonly #size: number;
  readonly #want: bigint;
  #last: number;
  #timer: Deadline | undefined;
  #done = false;
  #aborts: Set<Stoppable> | undefined;

  constructor(
    engine: TcpEngine,
    a: FastConn,
    b: FastConn,
    options: SpliceOptions,
    readonly target: SpliceTarget,
  ) {
    const { pool, idleMs = 0, clock = systemClock, signal } = options;
    this.#engine = engine;
    this.#c = engine.c;
    this.#a = a;
    this.#b = b;
    this.#up = new Direction(a, b);
    this.#down = new Direction(b, a);
    this.#pool = pool;
    this.#clock = clock;
    this.#coarse = clock === systemClock;
    this.#deadlines = Deadlines.of(clock);
    this.#idleMs = idleMs;
    this.#size = Math.min(engine.data.length, pool?.bufferBytes ?? PIPE_DEFAULTS.bufferBytes);
    this.#want = usize(this.#size);
    this.#last = clock.now();
    if (signal?.aborted) {
      this.stop(signal.reason);
      return;
    }
    // Closed while its server was being connected (the service stopping): its descriptor number may be another
    // connection's by now, so it must not be watched.
    if (a.closed || b.closed) {
      this.stop(new Error("closed"));
      return;
    }
    if (signal) this.#aborts = onAbortOf(signal, this);
    a.owner = b.owner = this;
    engine.adopt(a.fd, this, STREAM_EVENTS);
    engine.adopt(b.fd, this, STREAM_EVENTS);
    if (idleMs > 0) this.#timer = this.#deadlines.add(idleMs, () => this.#checkIdle());
    // What was reported before the splice took them is not reported again (edge-triggered).
    if (a.events & ~EPOLLOUT) this.ready(a.fd, a.events);
    if (b.events & ~EPOLLOUT && !this.#done) this.ready(b.fd, b.events);
  }

  /** Ends the splice from outside (its server's signal, or one of its connections closed). */
  stop(reason: unknown): void {
    this.#finish("aborted", reason);
  }

  #checkIdle(): void {
    this.#timer = undefined;
    if (this.#done) return;
    const quiet = this.#clock.now() - this.#last;
    if (quiet >= this.#idleMs) this.#finish("idle");
    else this.#timer = this.#deadlines.add(this.#idleMs - quiet, () => this.#checkIdle());
  }

  #finish(reason: PipeEndReason, error?: unknown, side?: "a" | "b"): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#timer !== undefined) this.#deadlines.cancel(this.#timer);
    this.#aborts?.delete(this);
    const a = this.#a, b = this.#b;
    a.owner = b.owner = null;
    a.close();
    b.close();
    for (const d of [this.#up, this.#down]) {
      if (d.held) this.#pool?.give(d.held);
      d.held = null;
    }
    const up = this.#up.bytes, down = this.#down.bytes;
    this.target.spliced(
      error === undefined && !side
        ? { up, down, reason }
        : { up, down, reason, ...(error !== undefined ? { error } : {}), ...(side ? { side } : {}) },
    );
  }

  #fail(conn: FastConn): void {
    this.#finish("error", new Error(this.#engine.describe(this.#engine.errno())), this.#sideOf(conn));
  }

  #sideOf(conn: FastConn): "a" | "b" {
    return conn === this.#a ? "a" : "b";
  }

  /**
   * Reads `d.src` and sends on to `d.dst` until the input is drained (a short read, unless a FIN was seen; or
   * EAGAIN), the far side cannot take more (the rest is held until it can) or READ_BURST reads were made (the engine
   * calls again next round).
   */
  #read(d: Direction): void {
    const c = this.#c, data = this.#engine.data, size = this.#size;
    for (let k = 0; k < READ_BURST; k++) {
      const n = c.recv(d.src.fd, data, this.#want, 0);
      if (n > 0) {
        this.#last = this.#coarse ? this.#engine.now : this.#clock.now();
        let sent = c.send(d.dst.fd, data, usize(n), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
          if (this.#engine.errno() !== EAGAIN) return this.#fail(d.dst);
          sent = 0;
        }
        d.bytes += sent;
        if (sent < n) {
          // Reading resumes once dst's EPOLLOUT has let `held` go (`pending` stays set).
          const held = d.held = this.#pool ? this.#pool.take() : new Uint8Array(size);
          held.set(data.subarray(sent, n));
          d.off = 0;
          d.end = n - sent;
          return;
        }
        if (n < size && !d.finSeen) {
          d.pending = false;
          return;
        }
      } else if (n === 0) {
        d.pending = false;
        d.eof = true;
        // Both ways at EOF: closing sends the FIN, no shutdown needed.
        if ((d === this.#up ? this.#down : this.#up).eof) return this.#finish("eof");
        // A failure here means the far side is gone already: its own events end the other direction.
        c.shutdown(d.dst.fd, SHUT_WR);
        return;
      } else {
        const e = this.#engine.errno();
        if (e === EAGAIN) {
          d.pending = false;
          return;
        }
        if (e === EINTR) continue;
        return this.#finish("error", new Error(this.#engine.describe(e)), this.#sideOf(d.src));
      }
    }
    this.#engine.again(d.src.fd, this);
  }

  #flush(d: Direction): void {
    const held = d.held!;
    const n = this.#c.send(
      d.dst.fd,
      held.subarray(d.off, d.end),
      usize(d.end - d.off),
      MSG_NOSIGNAL | MSG_DONTWAIT,
    );
    if (n < 0) {
      if (this.#engine.errno() !== EAGAIN) this.#fail(d.dst);
      return;
    }
    d.bytes += n;
    d.off += n;
    this.#last = this.#coarse ? this.#engine.now : this.#clock.now();
    if (d.off === d.end) {
      this.#pool?.give(held);
      d.held = null;
    }
  }

  ready(fd: number, events: number): void {
    if (this.#done) return;
    const conn = fd === this.#a.fd ? this.#a : this.#b;
    const out = conn === this.#a ? this.#up : this.#down; // conn is the source
    const back = conn === this.#a ? this.#down : this.#up; // conn is the destination
    if (events & EPOLLERR) {
      return this.#finish("error", new Error(this.#engine.socketError(fd)), this.#sideOf(conn));
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) out.pending = true;
    if (events & (EPOLLRDHUP | EPOLLHUP)) out.finSeen = true;
    if (events & EPOLLOUT && back.held) {
      this.#flush(back);
      if (this.#done) return;
      // Room again: what the source had left is read now (no new event would say it is there).
      if (!back.held && back.pending && !back.eof) this.#read(back);
      if (this.#done) return;
    }
    if (out.pending && !out.eof && !out.held) this.#read(out);
    if (this.#done) return;
    // Hung up both ways with its input already read to the end: nothing can flow to or from it any more.
    if (events & EPOLLHUP && out.eof) {
      return this.#finish(back.eof ? "eof" : "error", undefined, this.#sideOf(conn));
    }
  }
}
