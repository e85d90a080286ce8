/** A connection of the fast TCP path: a nonblocking descriptor the reactor watches. */
import type { HostPort } from "../../address.ts";
import type { Conn } from "../transport.ts";
import type { Reactor, Sink, Stoppable } from "./reactor.ts";

/** Closing twice is harmless. */
export class FastConn implements Conn, Sink {
  #closed = false;
  #local: HostPort | null = null;
  /** Told when the connection is closed from outside while a splice owns it (the service stopping). */
  owner: Stoppable | null = null;
  /**
   * Readiness seen between a connect's end and a splice taking the connection (edge-triggered events are reported
   * once: the splice reads them from here).
   */
  events = 0;
  constructor(readonly reactor: Reactor, readonly fd: number, readonly remote: HostPort) {}

  /** Keeps the readiness the reactor reports while no splice owns the connection yet. */
  ready(_fd: number, events: number): void {
    this.events |= events;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The local address (asked of the kernel once, when first wanted: only PROXY headers need it). */
  get local(): HostPort {
    return this.#local ??= this.reactor.localAddress(this.fd);
  }

  /** Sends all of `bytes` now or fails: for a few bytes (a PROXY header) on a connection just made. */
  writeNow(bytes: Uint8Array): void {
    this.reactor.sendNow(this.fd, bytes);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const owner = this.owner;
    this.owner = null;
    this.reactor.release(this.fd);
    owner?.stop(new Error("closed"));
  }
}
