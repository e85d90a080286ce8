/** The fast TCP transport: the reactor with its listener, connector and splice behind the Transport interface. */
import type { Transport } from "../transport.ts";
import type { FastConn } from "./conn.ts";
import { Connector } from "./connector.ts";
import { listenFast } from "./listener.ts";
import { Reactor } from "./reactor.ts";
import { spliceFast } from "./splice.ts";

/** The fast transport of this isolate, or null where FFI to libc is not allowed or this is not Linux. */
export function openFastTransport(): Transport | null {
  const reactor = Reactor.get();
  return reactor ? fastTransport(reactor) : null;
}

export function fastTransport(reactor: Reactor): Transport {
  const connector = new Connector(reactor);
  return {
    kind: "fast",
    get waits() {
      return reactor.waitsOnEventLoopThread ? "event loop thread" as const : "helper thread" as const;
    },
    ready: reactor.ready,
    listen: (addr, options) => listenFast(reactor, addr, options),
    connect: (addr, timeoutMs, clock, target) => connector.connect(addr, timeoutMs, clock, target),
    writeAll(conn, bytes) {
      try {
        (conn as FastConn).writeNow(bytes);
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(error);
      }
    },
    splice: (client, server, options, target) =>
      spliceFast({ a: client as FastConn, b: server as FastConn, target }, options),
  };
}
