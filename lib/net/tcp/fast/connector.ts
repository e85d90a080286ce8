/**
 * Outgoing connections of the fast TCP path: a nonblocking connect whose descriptor's first EPOLLOUT says how it
 * went. A failure for want of something on this host (no descriptor, no buffer, no local port) is a LocalShortage,
 * which a scheduler does not count against the server.
 */
import type { Clock } from "../../../core/clock.ts";
import { type Deadline, Deadlines } from "../../../core/deadlines.ts";
import { formatHostPort, type HostPort } from "../../address.ts";
import {
  EINPROGRESS,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  IPPROTO_TCP,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  TCP_NODELAY,
} from "../../libc.ts";
import { LocalShortage, shortageOfErrno } from "../errors.ts";
import type { ConnectTarget } from "../transport.ts";
import { FastConn } from "./conn.ts";
import type { Deferred, Reactor, Sink } from "./reactor.ts";

/**
 * What a connection's descriptor is watched for, once, for its whole life: edge-triggered input, output and the
 * peer's FIN. A level-triggered set would need its interest changed as a connection's state changes (an epoll_ctl
 * call each time); edge-triggered, a reader that has not drained its input remembers so itself.
 */
export const STREAM_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

/** Why a connect to `addr` failed, as the service shows it (the kernel's reason, or "timed out"). */
function connectFailure(addr: HostPort, reason: string): Error {
  return new Error(`Cannot connect to ${formatHostPort(addr)}: ${reason}`);
}

function failure(reactor: Reactor, addr: HostPort, errno: number): Error {
  const message = `Cannot connect to ${formatHostPort(addr)}: ${reactor.describe(errno)}`;
  const shortage = shortageOfErrno(errno);
  return shortage ? new LocalShortage(message, "connect", shortage) : new Error(message);
}

/**
 * A connect in progress: its descriptor's first EPOLLOUT says how it went. Its timeout is armed at the end of the next
 * round, not at once: a connect on a LAN or loopback has finished by then and never touches the deadline heap.
 */
class Connecting implements Sink, Deferred {
  #timer: Deadline | undefined;
  #clock: Clock | undefined;
  #ms = 0;
  #start = 0;
  #settled = false;
  constructor(readonly conn: FastConn, readonly target: ConnectTarget) {}

  expireIn(clock: Clock, ms: number): void {
    this.#clock = clock;
    this.#ms = ms;
    this.#start = clock.now();
    this.conn.reactor.later(this);
  }

  deferred(): void {
    if (this.#settled) return;
    const clock = this.#clock!;
    const left = Math.max(0, this.#ms - (clock.now() - this.#start));
    this.#timer = Deadlines.of(clock).add(left, () => {
      this.#settled = true;
      this.conn.close();
      this.target.connectFailed(connectFailure(this.conn.remote, "timed out"));
    });
  }

  ready(fd: number, events: number): void {
    this.#settled = true;
    if (this.#timer !== undefined) Deadlines.of(this.#clock!).cancel(this.#timer);
    const reactor = this.conn.reactor;
    if (!(events & (EPOLLERR | EPOLLHUP))) {
      // Writable and no error: connected. Until a splice takes it, the connection keeps what is reported.
      reactor.handle(fd, this.conn);
      this.conn.events = events;
      this.target.connected(this.conn);
    } else {
      const code = reactor.socketErrno(fd);
      this.conn.close();
      this.target.connectFailed(
        code
          ? failure(reactor, this.conn.remote, code)
          : connectFailure(this.conn.remote, "connection failed"),
      );
    }
  }
}

/** Connects for one reactor; a server's address is encoded into a sockaddr once, not per connection. */
export class Connector {
  /** Encoded sockaddrs of the addresses connected to (servers' addresses are long-lived objects). */
  readonly #encoded = new WeakMap<HostPort, { family: number; len: number; bytes: Uint8Array }>();
  constructor(readonly reactor: Reactor) {}

  /**
   * Connects to `addr` without blocking and tells `target` how it went: at once when the kernel can say at once (a
   * failure before any packet left), else from the descriptor's first readiness, or "timed out" after `timeoutMs`
   * (0: the kernel's own limit) on `clock`.
   */
  connect(addr: HostPort, timeoutMs: number, clock: Clock, target: ConnectTarget): void {
    const r = this.reactor, c = r.c;
    let sa = this.#encoded.get(addr);
    if (!sa) {
      const [family, len] = r.writeAddr(addr);
      sa = { family, len, bytes: r.addr.slice(0, len) };
      this.#encoded.set(addr, sa);
    }
    const { family, len } = sa;
    const fd = c.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return target.connectFailed(failure(r, addr, r.errno()));
    r.setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    r.addr.set(sa.bytes);
    if (c.connect(fd, r.addr, len) === 0) return target.connected(new FastConn(r, fd, addr));
    const e = r.errno();
    if (e !== EINPROGRESS) {
      c.close(fd);
      return target.connectFailed(failure(r, addr, e));
    }
    const pending = new Connecting(new FastConn(r, fd, addr), target);
    r.watch(fd, STREAM_EVENTS, pending);
    if (timeoutMs > 0) pending.expireIn(clock, timeoutMs);
  }
}
