/**
 * The fast splice: relays between a client connection `a` and its server connection `b`, both watched by the
 * reactor, with recv and send from the reactor's one shared buffer straight from the readiness event. The contract is
 * the portable pipe's (../pipe.ts), checked by one suite (tests/net/tcp_contract.ts): one side's EOF half-closes the
 * other and the reverse direction runs on; a failure on either side, the idle timeout or the signal closes both.
 * What a slow peer cannot take yet waits in one pooled buffer per direction, and reading that direction stops.
 */
import type { Clock } from "../../../core/clock.ts";
import { type Deadline, Deadlines } from "../../../core/deadlines.ts";
import {
  EAGAIN,
  EINTR,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  type Libc,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SHUT_WR,
} from "../../libc.ts";
import { BUFFER_DEFAULTS, type BufferPool } from "../pool.ts";
import type { SpliceEndReason, SpliceOptions, SpliceTarget } from "../transport.ts";
import type { FastConn } from "./conn.ts";
import { STREAM_EVENTS } from "./connector.ts";
import { type Deferred, type Reactor, type Sink, type Stoppable, usize } from "./reactor.ts";

/** Reads per readiness event of a connection (the reactor calls again next round for the rest). */
const READ_BURST = 4;

/**
 * Relays between `a` (client) and `b` (server) until both directions end, then closes both and tells `target` the
 * totals; never fails. Activity is stamped on `options.clock` (default: the reactor's).
 */
export function spliceFast(
  pair: { readonly a: FastConn; readonly b: FastConn; readonly target: SpliceTarget },
  options: SpliceOptions = {},
): void {
  new Splice(pair.a.reactor, pair.a, pair.b, options, pair.target);
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
  /** `src` has ended and `dst` waits to be half-closed (`Splice.deferred`). */
  shutLater = false;
  constructor(readonly src: FastConn, readonly dst: FastConn) {}
}

/** The relaying of one client connection `a` and its server connection `b` (`spliceFast`). */
class Splice implements Sink, Stoppable, Deferred {
  readonly #reactor: Reactor;
  readonly #c: Libc;
  readonly #a: FastConn;
  readonly #b: FastConn;
  readonly #up: Direction;
  readonly #down: Direction;
  readonly #pool: BufferPool | undefined;
  readonly #clock: Clock;
  /** On the reactor's clock, activity is stamped with its round time (one clock read per round, not per read). */
  readonly #coarse: boolean;
  readonly #deadlines: Deadlines;
  readonly #idleMs: number;
  /** Bytes a read takes at most: one pool buffer's worth, so whatever the far side cannot take yet fits in one. */
  readonly #size: number;
  readonly #want: bigint;
  #last: number;
  #timer: Deadline | undefined;
  /** Whether the idle timer has been armed (it is, one round after the splice began). */
  #idleArmed = false;
  #done = false;
  #aborts: Set<Stoppable> | undefined;

  constructor(
    reactor: Reactor,
    a: FastConn,
    b: FastConn,
    options: SpliceOptions,
    readonly target: SpliceTarget,
  ) {
    const { pool, idleMs = 0, clock = reactor.clock, signal } = options;
    this.#reactor = reactor;
    this.#c = reactor.c;
    this.#a = a;
    this.#b = b;
    this.#up = new Direction(a, b);
    this.#down = new Direction(b, a);
    this.#pool = pool;
    this.#clock = clock;
    this.#coarse = clock === reactor.clock;
    this.#deadlines = Deadlines.of(clock);
    this.#idleMs = idleMs;
    this.#size = Math.min(reactor.data.length, pool?.bufferBytes ?? BUFFER_DEFAULTS.bufferBytes);
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
    if (signal) this.#aborts = reactor.onAbort(signal, this);
    a.owner = b.owner = this;
    reactor.adopt(a.fd, this, STREAM_EVENTS);
    reactor.adopt(b.fd, this, STREAM_EVENTS);
    // The idle timer is armed at the end of the next round (`deferred`), not now: most spliced connections that
    // carry one request have ended by then, and never touch the deadline heap.
    if (idleMs > 0) reactor.later(this);
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

  #finish(reason: SpliceEndReason, error?: unknown, side?: "a" | "b"): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#timer !== undefined) this.#deadlines.cancel(this.#timer);
    this.#aborts?.delete(this);
    const a = this.#a, b = this.#b;
    a.owner = b.owner = null;
    a.close();
    b.close();
    this.#release(this.#up);
    this.#release(this.#down);
    const up = this.#up.bytes, down = this.#down.bytes;
    this.target.spliced(
      error === undefined && !side
        ? { up, down, reason }
        : { up, down, reason, ...(error !== undefined ? { error } : {}), ...(side ? { side } : {}) },
    );
  }

  #release(d: Direction): void {
    if (d.held) this.#pool?.give(d.held);
    d.held = null;
  }

  #fail(conn: FastConn): void {
    this.#finish("error", new Error(this.#reactor.describe(this.#reactor.errno())), this.#sideOf(conn));
  }

  #sideOf(conn: FastConn): "a" | "b" {
    return conn === this.#a ? "a" : "b";
  }

  /**
   * Reads `d.src` and sends on to `d.dst` until the input is drained (a short read, unless a FIN was seen; or
   * EAGAIN), the far side cannot take more (the rest is held until it can) or READ_BURST reads were made (the reactor
   * calls again next round).
   */
  #read(d: Direction): void {
    const c = this.#c, data = this.#reactor.data, size = this.#size;
    for (let k = 0; k < READ_BURST; k++) {
      const n = c.recv(d.src.fd, data, this.#want, 0);
      if (n > 0) {
        this.#last = this.#coarse ? this.#reactor.now : this.#clock.now();
        let sent = c.send(d.dst.fd, data, usize(n), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
          if (this.#reactor.errno() !== EAGAIN) return this.#fail(d.dst);
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
        if (n < size) {
          d.pending = false;
          // The peer's FIN had come before this read, and the read found less than it asked for: the kernel delivers
          // in order, so the input is drained up to the FIN and a further recv would only return 0 (one syscall
          // saved per connection that a server closes, as HTTP/1.0 and `Connection: close` servers do).
          if (d.finSeen) this.#ended(d);
          return;
        }
      } else if (n === 0) {
        return this.#ended(d);
      } else {
        const e = this.#reactor.errno();
        if (e === EAGAIN) {
          d.pending = false;
          return;
        }
        if (e === EINTR) continue;
        return this.#finish("error", new Error(this.#reactor.describe(e)), this.#sideOf(d.src));
      }
    }
    this.#reactor.again(d.src.fd, this);
  }

  /**
   * `d`'s source has sent its FIN and everything before it has been relayed. The FIN is passed on (a half-close of
   * `d.dst`) at the end of the next round, not at once: a request/response peer usually closes as soon as it has its
   * answer, and when its close comes meanwhile both ends are simply closed. That saves the shutdown call, and the
   * TIME_WAIT socket that closing first leaves on this side (HAProxy gets the same from reading the FIN a round late).
   */
  #ended(d: Direction): void {
    d.pending = false;
    d.eof = true;
    // Both ways at EOF: closing sends the FIN, no shutdown needed.
    if ((d === this.#up ? this.#down : this.#up).eof) return this.#finish("eof");
    d.shutLater = true;
    this.#reactor.later(this);
  }

  /** Half-closes what `#ended` left to half-close, unless the splice has ended meanwhile. */
  deferred(): void {
    if (this.#done) return;
    if (this.#idleMs > 0 && this.#timer === undefined && !this.#idleArmed) {
      this.#idleArmed = true;
      const quiet = this.#clock.now() - this.#last;
      this.#timer = this.#deadlines.add(Math.max(0, this.#idleMs - quiet), () => this.#checkIdle());
    }
    for (let i = 0; i < 2; i++) {
      const d = i === 0 ? this.#up : this.#down;
      if (!d.shutLater) continue;
      d.shutLater = false;
      // A failure here means the far side is gone already: its own events end the other direction.
      this.#c.shutdown(d.dst.fd, SHUT_WR);
    }
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
      if (this.#reactor.errno() !== EAGAIN) this.#fail(d.dst);
      return;
    }
    d.bytes += n;
    d.off += n;
    this.#last = this.#coarse ? this.#reactor.now : this.#clock.now();
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
      return this.#finish("error", new Error(this.#reactor.socketError(fd)), this.#sideOf(conn));
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
