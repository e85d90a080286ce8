/**
 * TCP for edgenode, as lib/net/udp.ts is UDP: the Transport a scheduler's services carry their connections over,
 * in two implementations that pass one contract suite (fast: epoll through FFI to libc, ./fast/; portable: Deno's
 * own sockets, ./portable.ts), the buffer pool both splice through, Deno-socket listeners and connects for checks and
 * the agent (./socket.ts), short check exchanges (./exchange.ts), and which failures are this host's own
 * (./errors.ts).
 */
export * from "./transport.ts";
export { openTransport } from "./open.ts";
export { BUFFER_DEFAULTS, BufferPool } from "./pool.ts";
export { LOCAL_SHORTAGES, LocalShortage, shortageOf } from "./errors.ts";
