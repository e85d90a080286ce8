/**
 * TCP listeners and outgoing connections on Deno's own sockets: the one file that calls Deno.listen and Deno.connect
 * for TCP (the portable transport, health checks, agent polls, the agent's server).
 * Connections come back with TCP_NODELAY set (a proxy must not add Nagle's delay to what it relays), connects take a
 * timeout on the injected clock and the caller's AbortSignal, and every socket error is sorted into a few kinds the
 * scheduler acts on (a refused or timed-out connect counts against a server; a reset from a client is routine; this
 * host running out of descriptors counts against nobody).
 */
import { processSockets } from "../handover.ts";
import { type Clock, deadline, systemClock } from "../../core/clock.ts";
import { errorMessage, StartError } from "../../core/errors.ts";
import { formatHostPort, type HostPort } from "../address.ts";
import { describeListenError } from "../http.ts";
import { shortageOf } from "./errors.ts";

/** What went wrong on a socket, in the terms the scheduler acts on. */
export type TcpErrorKind =
  /** Nothing listens there (RST to the SYN). */
  | "refused"
  /** The connect did not finish in time (our timeout or the kernel's). */
  | "timeout"
  /** No route to the host or network. */
  | "unreachable"
  /** The peer reset the connection or it broke while writing (ECONNRESET, EPIPE, ECONNABORTED). */
  | "reset"
  /** The caller's signal aborted the operation. */
  | "aborted"
  /** The socket was closed here while the operation was pending (our own close, not the peer's). */
  | "closed"
  /** This host ran out of descriptors, buffers or memory (./errors.ts): nobody else's fault. */
  | "local"
  | "other";

/** Sorts an error thrown by a Deno socket call into a TcpErrorKind. */
export function classifyTcpError(error: unknown): TcpErrorKind {
  const e = Deno.errors;
  if (error instanceof e.ConnectionRefused) return "refused";
  if (error instanceof e.TimedOut) return "timeout";
  if (error instanceof e.NetworkUnreachable) return "unreachable";
  if (
    error instanceof e.ConnectionReset || error instanceof e.BrokenPipe ||
    error instanceof e.ConnectionAborted || error instanceof e.NotConnected
  ) return "reset";
  if (error instanceof e.BadResource || error instanceof e.Interrupted) return "closed";
  // EADDRNOTAVAIL is a local shortage when the ephemeral ports ran out, but also what a connect to an address this
  // host cannot use at all gets (an IPv6 server with IPv6 off): a check must fail then, or such a server would stay
  // up forever. Connects through Deno's sockets (checks, agent polls, the portable path) take it as a failure.
  const shortage = shortageOf(error);
  if (shortage && shortage !== "EADDRNOTAVAIL") return "local";
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EHOSTDOWN") return "unreachable";
  if (code === "ETIMEDOUT") return "timeout";
  return "other";
}

/** A connect that failed, with the address tried and the kind of failure. */
export class TcpConnectError extends Error {
  override name = "TcpConnectError";
  constructor(readonly addr: HostPort, readonly kind: TcpErrorKind, options?: ErrorOptions) {
    super(
      `Cannot connect to ${formatHostPort(addr)}: ${describeConnectFailure(kind, options?.cause)}`,
      options,
    );
  }
}

function describeConnectFailure(kind: TcpErrorKind, cause: unknown): string {
  switch (kind) {
    case "refused":
      return "connection refused";
    case "timeout":
      return "timed out";
    case "unreachable":
      return "host unreachable";
    case "aborted":
      return "aborted";
    default:
      return errorMessage(cause);
  }
}

export interface ConnectTcpOptions {
  /** Give up after this many ms on `clock` (kind "timeout"); 0 or absent waits as long as the kernel does. */
  readonly timeoutMs?: number;
  readonly clock?: Clock;
  /** Aborting gives up at once (kind "aborted"); it does not touch a connection once made. */
  readonly signal?: AbortSignal;
  /** TCP_NODELAY; default true. */
  readonly noDelay?: boolean;
  /** SO_KEEPALIVE; default false. */
  readonly keepAlive?: boolean;
}

/** Opens a TCP connection; rejects only with TcpConnectError. */
export async function connectTcp(addr: HostPort, options: ConnectTcpOptions = {}): Promise<Deno.TcpConn> {
  const { timeoutMs = 0, clock = systemClock, signal } = options;
  if (signal?.aborted) throw new TcpConnectError(addr, "aborted", { cause: signal.reason });
  const limit = timeoutMs > 0 ? deadline(clock, timeoutMs, signal) : undefined;
  const connectSignal = limit?.signal ?? signal;
  try {
    const conn = await Deno.connect({
      hostname: addr.host,
      port: addr.port,
      transport: "tcp",
      signal: connectSignal,
    });
    try {
      tune(conn, options);
    } catch (error) {
      closeQuietly(conn);
      throw error;
    }
    return conn;
  } catch (error) {
    // Which signal fired decides the kind: the caller's abort is not the server's fault, our timeout is.
    const kind = signal?.aborted ? "aborted" : connectSignal?.aborted ? "timeout" : classifyTcpError(error);
    throw new TcpConnectError(addr, kind, { cause: error });
  } finally {
    limit?.cancel();
  }
}

export const PORTABLE_TCP_REASON =
  "a listener on Deno's own sockets (io: portable, or the agent) keeps its descriptor; the next process binds the " +
  "port itself with SO_REUSEPORT, and connections still queued here when this process closes it are reset " +
  "(unless net.ipv4.tcp_migrate_req=1)";

export interface ListenTcpOptions {
  /** SO_REUSEPORT, so that several worker processes can share one address (Linux spreads connections). */
  readonly reusePort?: boolean;
  /** TCP_NODELAY on accepted connections; default true. */
  readonly noDelay?: boolean;
  /** SO_KEEPALIVE on accepted connections; default false. */
  readonly keepAlive?: boolean;
}

export interface TcpListener extends Disposable {
  /** The bound address (the real port when 0 was asked for). */
  readonly addr: HostPort;
  /**
   * The next connection, or null once the listener is closed. Other failures (out of file descriptors) throw;
   * an accept loop should log them and go on after a pause rather than stop serving.
   */
  accept(): Promise<Deno.TcpConn | null>;
  /** Stops accepting; a pending accept resolves with null. Closing twice is harmless. */
  close(): void;
}

/**
 * Listens on `addr`; failures (address in use, not available, permission) throw StartError. Deno keeps the
 * descriptor, so a takeover cannot pass this listener: it is listed in the process's registry with that reason, and
 * where the process may be taken over (`overlap`) it binds with SO_REUSEPORT so the next process can bind beside it.
 */
export function listenTcp(addr: HostPort, options: ListenTcpOptions = {}): TcpListener {
  const registry = processSockets();
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen(
      {
        hostname: addr.host,
        port: addr.port,
        transport: "tcp",
        reusePort: (options.reusePort ?? false) || registry.overlap,
      } as Deno.TcpListenOptions & { transport: "tcp" },
    );
  } catch (error) {
    throw new StartError(`Cannot listen on tcp ${formatHostPort(addr)}: ${describeListenError(error)}`);
  }
  const bound = { host: listener.addr.hostname, port: listener.addr.port };
  const unlist = registry.hold("tcp", addr, null, PORTABLE_TCP_REASON);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    unlist();
    try {
      listener.close();
    } catch {
      // already closed
    }
  };
  return {
    addr: bound,
    async accept() {
      for (;;) {
        if (closed) return null;
        let conn: Deno.TcpConn;
        try {
          conn = await listener.accept();
        } catch (error) {
          if (closed || classifyTcpError(error) === "closed") return null;
          // A client that reset before we took it from the queue is no reason to stop.
          if (error instanceof Deno.errors.ConnectionAborted) continue;
          throw error;
        }
        try {
          tune(conn, options);
        } catch {
          // The client is gone already (setsockopt on a dead socket); take the next.
          closeQuietly(conn);
          continue;
        }
        return conn;
      }
    },
    close,
    [Symbol.dispose]: close,
  };
}

function tune(conn: Deno.TcpConn, options: { noDelay?: boolean; keepAlive?: boolean }): void {
  conn.setNoDelay(options.noDelay ?? true);
  if (options.keepAlive) conn.setKeepAlive(true);
}

/** Closes a connection, ignoring that it may be closed already. */
export function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // BadResource: closed already; nothing else can go wrong in close
  }
}
