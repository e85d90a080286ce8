/**
 * A listening socket of the fast TCP path: accepts straight from its readiness event, a burst at a time. A listener
 * the previous process handed over (lib/net/handover.ts) is adopted, not bound: its accept queue is the same one.
 */
import { StartError } from "../../../core/errors.ts";
import { formatHostPort, type HostPort, isIPv4, isIPv6 } from "../../address.ts";
import {
  EAGAIN,
  ECONNABORTED,
  EINTR,
  EPOLLIN,
  F_GETFL,
  F_SETFL,
  IPPROTO_TCP,
  O_NONBLOCK,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_NODELAY,
} from "../../libc.ts";
import { processSockets } from "../../handover.ts";
import { LocalShortage, shortageOfErrno } from "../errors.ts";
import type { ListenOptions, TransportListener } from "../transport.ts";
import { FastConn } from "./conn.ts";
import type { Reactor, Sink } from "./reactor.ts";

/** Most connections taken per readiness event of a listener (the rest are reported again next round). */
const ACCEPT_BURST = 64;
const LISTEN_BACKLOG = 4096;

class FastListener implements TransportListener, Sink {
  #accepted: ((conn: FastConn) => void) | null = null;
  #failed: ((error: Error) => Promise<void>) | null = null;
  #served: (() => void) | null = null;
  #closed = false;
  #paused = false;
  #registered = false;

  constructor(
    readonly reactor: Reactor,
    readonly fd: number,
    readonly addr: HostPort,
    readonly where: string,
    /** Takes the listener out of the process's registry. */
    readonly unlist: () => void,
  ) {}

  serve(accepted: (conn: FastConn) => void, failed: (error: Error) => Promise<void>): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#accepted = accepted;
    this.#failed = failed;
    const p = new Promise<void>((resolve) => this.#served = resolve);
    if (!this.#registered) {
      this.#registered = true;
      // Level-triggered: what one burst leaves in the queue is reported again next round.
      this.reactor.watch(this.fd, EPOLLIN, this);
    }
    return p;
  }

  ready(): void {
    const r = this.reactor, c = r.c, accepted = this.#accepted!;
    // At most ACCEPT_BURST per event, so one busy listener cannot hold up every other socket's events.
    for (let k = 0; k < ACCEPT_BURST && !this.#closed; k++) {
      r.resetAddrLen();
      const cfd = c.accept4(this.fd, r.addr, r.addrLen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (cfd < 0) {
        const e = r.errno();
        if (e === EINTR || e === ECONNABORTED) continue;
        if (e !== EAGAIN) this.#pause(e);
        return;
      }
      accepted(new FastConn(r, cfd, r.readAddr()));
    }
  }

  /**
   * Out of descriptors or memory: the queue stays readable, so the listener is not watched (no spinning on it) until
   * the promise of whoever is told resolves (the scheduler pauses on its own clock).
   */
  #pause(errno: number): void {
    if (this.#paused) return;
    this.#paused = true;
    this.reactor.interest(this.fd, 0);
    const shortage = shortageOfErrno(errno);
    const message = `Cannot accept on ${this.where}: ${this.reactor.describe(errno)}`;
    const error = shortage ? new LocalShortage(message, "accept", shortage) : new Error(message);
    this.#failed!(error).then(() => {
      this.#paused = false;
      if (!this.#closed) this.reactor.interest(this.fd, EPOLLIN);
    });
  }

  /**
   * Stops accepting: close(2), never shutdown(2). The socket may be shared with a process it was handed to, which
   * goes on accepting from the same queue (shutdown would reset what waits in it, for both).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.unlist();
    this.reactor.release(this.fd, true);
    this.#served?.();
  }
}

/** Listens on `addr` (SO_REUSEPORT when asked); failures throw StartError naming the address. */
export function listenFast(reactor: Reactor, addr: HostPort, options: ListenOptions = {}): TransportListener {
  const where = `tcp ${formatHostPort(addr)}`;
  if (!isIPv4(addr.host) && !isIPv6(addr.host)) {
    throw new StartError(`Cannot listen on ${where}: not an IP address`);
  }
  const c = reactor.c;
  const registry = processSockets();
  const inherited = registry.take("tcp", addr);
  if (inherited !== null) {
    // The reactor's accept loop needs a non-blocking socket; one handed over may not be (a peer other than edgenode,
    // an older edgenode). The flag is the open file description's, shared with the process that handed it over,
    // which made its own non-blocking too (setting it again changes nothing there).
    const flags = c.fcntl(inherited, F_GETFL, 0);
    if (flags < 0 || ((flags & O_NONBLOCK) === 0 && c.fcntl(inherited, F_SETFL, flags | O_NONBLOCK) !== 0)) {
      const reason = reactor.describe(reactor.errno());
      c.close(inherited);
      throw new StartError(
        `Cannot listen on ${where}: the handed-over socket cannot be made non-blocking: ${reason}`,
      );
    }
    const bound = reactor.localAddress(inherited);
    return new FastListener(reactor, inherited, bound, where, registry.hold("tcp", addr, inherited));
  }
  const [family, len] = reactor.writeAddr(addr);
  const fd = c.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new StartError(`Cannot listen on ${where}: ${reactor.describe(reactor.errno())}`);
  reactor.setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
  if (options.reusePort) reactor.setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  // Linux hands this to every accepted socket: one call per listener instead of one per connection.
  reactor.setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  reactor.writeAddr(addr);
  if (c.bind(fd, reactor.addr, len) !== 0 || c.listen(fd, LISTEN_BACKLOG) !== 0) {
    const reason = reactor.describe(reactor.errno());
    c.close(fd);
    throw new StartError(`Cannot listen on ${where}: ${reason}`);
  }
  const bound = reactor.localAddress(fd);
  return new FastListener(reactor, fd, bound, where, registry.hold("tcp", addr, fd));
}
