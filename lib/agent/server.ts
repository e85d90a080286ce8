/**
 * The agent's TCP server: sockets come from lib/net/tcp/socket.ts, this file only reads and writes them. Each
 * accepted connection gets one reply line and is closed: the reply is written at once (a checker's
 * `agent-send` text is read alongside but never waited for), then the write side is shut so the checker sees
 * the end, and what the checker still sends is read until it closes. Closing with unread input would make the
 * kernel send a reset, which can destroy the reply before the checker reads it. Connections beyond
 * `maxClients` are closed unanswered; each connection has a deadline.
 */
import { type Clock, deadline } from "../core/clock.ts";
import { errorMessage, StartError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { HostPort } from "../net/address.ts";
import { closeQuietly, listenTcp, type TcpListener } from "../net/tcp/socket.ts";

/** The part of a checker's request kept for /status; the rest is read and dropped. */
export const MAX_REQUEST_KEPT = 256;
/** A checker sending more than this is not a checker: the connection is closed. */
const MAX_REQUEST_READ = 64 * 1024;
/** After a failed accept (out of file descriptors), wait this long before the next, rather than spin. */
const ACCEPT_BACKOFF_MS = 100;

export interface AgentServerOptions {
  readonly listen: HostPort;
  /** Connections handled at once; more are closed at once and counted as refused. */
  readonly maxClients: number;
  /** Longest a connection may live, from accept to close. */
  readonly timeoutMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The line to send (with its "\n"); may take time, within the connection's deadline. */
  readonly reply: () => Promise<string>;
}

export interface AgentServerStats {
  accepted: number;
  replies: number;
  /** Connections that ended without their reply written: timeouts, resets, a failed reply. */
  errors: number;
  refused: number;
  active: number;
  /** What the last checker sent (HAProxy's agent-send), printable ASCII, cut short; null for nothing. */
  lastRequest: string | null;
}

export interface AgentServer {
  /** The bound address (the real port when 0 was asked for). */
  readonly addr: HostPort;
  readonly stats: Readonly<AgentServerStats>;
  /** Stops accepting at once, lets connections finish until `deadline` aborts, then closes them. */
  close(deadline: AbortSignal): Promise<void>;
  /** New limits (a reload), for connections accepted from now on. */
  update(limits: { readonly maxClients: number; readonly timeoutMs: number }): void;
}

const encoder = new TextEncoder();

/** Listens on `options.listen`; throws StartError naming the address and the reason when it cannot. */
export function serveAgent(options: AgentServerOptions): AgentServer {
  let listener: TcpListener;
  try {
    listener = listenTcp(options.listen);
  } catch (error) {
    // "Cannot listen on tcp ADDR: reason" becomes "Cannot start agent: cannot listen on tcp ADDR: reason".
    const why = errorMessage(error);
    throw new StartError(`Cannot start agent: ${why[0].toLowerCase()}${why.slice(1)}`, {
      cause: error,
      configPath: "agent.listen",
    });
  }
  const { clock, logger } = options;
  const limits = { maxClients: options.maxClients, timeoutMs: options.timeoutMs };
  const addr = listener.addr;
  const stats: AgentServerStats = {
    accepted: 0,
    replies: 0,
    errors: 0,
    refused: 0,
    active: 0,
    lastRequest: null,
  };
  const handlers = new Set<Promise<void>>();
  const stopping = new AbortController();
  let closed = false;

  async function handle(conn: Deno.TcpConn): Promise<void> {
    const limit = deadline(clock, limits.timeoutMs, stopping.signal);
    // Closing the connection is what ends a read or write blocked on a silent or stalled peer.
    const closeOnce = once(() => conn.close());
    limit.signal.addEventListener("abort", closeOnce, { once: true });
    const input = readRequest(conn);
    let replied = false;
    try {
      const line = await untilAborted(options.reply(), limit.signal);
      await writeAll(conn, encoder.encode(line));
      replied = true;
      stats.replies++;
      await conn.closeWrite();
      const request = await input;
      if (request) stats.lastRequest = request;
    } catch (error) {
      if (!replied) {
        stats.errors++;
        logger.debug("agent connection failed", { error: describe(error), timed_out: limit.signal.aborted });
      }
    } finally {
      limit.cancel();
      closeOnce();
      await input.catch(() => {});
    }
  }

  async function acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn | null;
      try {
        conn = await listener.accept();
        if (conn === null) return;
      } catch (error) {
        if (closed) return;
        stats.errors++;
        logger.warn("agent accept failed", { error: describe(error) });
        await pause(ACCEPT_BACKOFF_MS);
        continue;
      }
      stats.accepted++;
      if (closed || stats.active >= limits.maxClients) {
        stats.refused++;
        closeQuietly(conn);
        continue;
      }
      stats.active++;
      const handler = handle(conn).finally(() => {
        stats.active--;
        handlers.delete(handler);
      });
      handlers.add(handler);
    }
  }

  // A pause that close() cuts short, so stopping never waits on the clock.
  const closing = new AbortController();
  function pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clock.clearTimeout(id);
        closing.signal.removeEventListener("abort", done);
        resolve();
      };
      const id = clock.setTimeout(done, ms);
      closing.signal.addEventListener("abort", done, { once: true });
    });
  }

  const accepting = acceptLoop();

  return {
    addr,
    stats,
    async close(drain) {
      if (!closed) {
        closed = true;
        closing.abort();
        listener.close();
      }
      await accepting;
      if (handlers.size && !drain.aborted) {
        await Promise.race([
          Promise.allSettled([...handlers]),
          new Promise<void>((resolve) => drain.addEventListener("abort", () => resolve(), { once: true })),
        ]);
      }
      stopping.abort();
      await Promise.allSettled([...handlers]);
    },
    update(next) {
      limits.maxClients = next.maxClients;
      limits.timeoutMs = next.timeoutMs;
    },
  };
}

/** Reads until the peer closes; resolves with the start of what it sent (null for nothing). Never rejects. */
async function readRequest(conn: Deno.TcpConn): Promise<string | null> {
  const buf = new Uint8Array(4096);
  let kept = "";
  let total = 0;
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      total += n;
      if (kept.length < MAX_REQUEST_KEPT) {
        kept += new TextDecoder().decode(buf.subarray(0, Math.min(n, MAX_REQUEST_KEPT - kept.length)));
      }
      if (total > MAX_REQUEST_READ) break;
    }
  } catch {
    // Closed under the read (deadline, stop) or reset by the peer: what was read stands.
  }
  const text = kept.replace(/[^\x20-\x7e]/g, " ").trim();
  return text || null;
}

/** `work`, or a rejection as soon as `signal` aborts (the work itself goes on; its result is dropped). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Error("deadline passed before the reply was ready"));
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

async function writeAll(conn: Deno.TcpConn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    try {
      fn();
    } catch {
      // Already closed.
    }
  };
}

function describe(error: unknown): string {
  return errorMessage(error);
}
