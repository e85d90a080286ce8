/**
 * The HTTP listener behind the status API: the one place that calls Deno.serve. Start failures become StartError
 * with the address and the reason; stopping closes the listener at once and waits for requests in flight until the
 * deadline.
 */
import { errorMessage, StartError } from "../core/errors.ts";
import { formatHostPort, type HostPort } from "./address.ts";
import { processSockets } from "./handover.ts";

export interface HttpServer {
  /** The bound address (the real port when 0 was asked for). */
  readonly addr: HostPort;
  stop(deadline: AbortSignal): Promise<void>;
}

export const STATUS_REASON =
  "the status API (Deno.serve) keeps its descriptor; both processes hold the port with SO_REUSEPORT while they " +
  "overlap, and requests queued in the old listener when it closes are reset";

/** `info` carries the client's address (Deno.serve's): routes that key on the client (redirect persistence) read it. */
export type Handler = (
  request: Request,
  info?: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Response | Promise<Response>;

export function serveHttp(handler: Handler, addr: HostPort): HttpServer {
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    // Deno.serve keeps its descriptor, so a takeover cannot pass this listener: both processes hold the port
    // through SO_REUSEPORT while they overlap (requests queued in the old one's listener when it closes are reset).
    const reusePort = processSockets().overlap;
    server = Deno.serve({ hostname: addr.host, port: addr.port, reusePort, onListen: () => {} }, handler);
  } catch (error) {
    throw new StartError(`Cannot listen on ${formatHostPort(addr)}: ${describeListenError(error)}`);
  }
  const bound = { host: server.addr.hostname, port: server.addr.port };
  const unlist = processSockets().hold("tcp", addr, null, STATUS_REASON);
  return {
    addr: bound,
    // Past the deadline we stop waiting; Deno offers no way to cut open connections, and main exits right after.
    async stop(deadline) {
      unlist();
      const done = server.shutdown();
      await Promise.race([
        done,
        new Promise<void>((resolve) => {
          if (deadline.aborted) resolve();
          deadline.addEventListener("abort", () => resolve(), { once: true });
        }),
      ]);
    },
  };
}

export function describeListenError(error: unknown): string {
  if (error instanceof Deno.errors.AddrInUse) return "address already in use";
  if (error instanceof Deno.errors.AddrNotAvailable) return "address not available on this host";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  return errorMessage(error);
}
