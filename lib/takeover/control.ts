/**
 * The running process's side of a takeover: the control socket (`process.control_socket`). A new process that
 * connects asks for the sockets; this side hands over every descriptor in the process's registry (lib/net/handover.ts),
 * says which sockets it cannot pass and why, and waits. When the new process says it serves, this one removes its
 * socket file (the path is the new process's now), answers "draining" and calls `handOver` (the caller stops
 * accepting and drains through the ordinary stop path). When the new process aborts, fails or goes silent, nothing
 * here changed: the sockets it was sent were copies, and this process goes on serving.
 *
 * Only the file's permissions (mode 0600, this user) guard the socket: whoever may open it may take the process over.
 */
import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { formatHostPort } from "../net/address.ts";
import { ControlListener, type FdChannel, MAX_FDS_PER_FRAME } from "../net/fd_channel.ts";
import type { SocketRegistry } from "../net/handover.ts";
import { type ControlMessage, message, parseMessage, ProtocolError } from "./protocol.ts";

export interface ControlOptions {
  readonly registry: SocketRegistry;
  readonly logger: Logger;
  /** The drain deadline the stop will use (told to the new process). */
  readonly drainTimeoutMs: number;
  /** Called once, when the new process serves: stop accepting and drain. */
  readonly handOver: (pid: number) => void;
  /** How long the new process may take to start serving (default 60 s). */
  readonly readyTimeoutMs?: number;
}

const REQUEST_TIMEOUT_MS = 5_000;
const READY_TIMEOUT_MS = 60_000;

export class ControlServer {
  readonly #listener: ControlListener;
  readonly #options: ControlOptions;
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;

  private constructor(listener: ControlListener, options: ControlOptions) {
    this.#listener = listener;
    this.#options = options;
  }

  /** Makes the socket file (StartError when a live process answers there); serves once `serve()` is called. */
  static open(path: string, options: ControlOptions): ControlServer {
    return new ControlServer(ControlListener.open(path), options);
  }

  get path(): string {
    return this.#listener.path;
  }

  /** Answers connections, one at a time, until closed or handed over. */
  serve(): void {
    this.#loop ??= (async () => {
      const signal = this.#stop.signal;
      for (;;) {
        const channel = await this.#listener.accept(signal);
        if (!channel) return;
        try {
          if (await this.#converse(channel, signal)) return;
        } finally {
          channel.close();
        }
      }
    })();
  }

  /** One takeover conversation; true when the process was handed over. */
  async #converse(ch: FdChannel, signal: AbortSignal): Promise<boolean> {
    const log = this.#options.logger;
    const { registry } = this.#options;
    let request: Extract<ControlMessage, { type: "takeover" }>;
    try {
      request = parseMessage((await ch.receive(REQUEST_TIMEOUT_MS, signal)).message, ["takeover"]);
    } catch (error) {
      log.warn("control: refused a request", { error: errorMessage(error) });
      if (error instanceof ProtocolError) {
        await trySend(ch, message({ type: "refused", reason: error.message }));
      }
      return false;
    }
    const pid = request.pid;
    const held = registry.held();
    const passable = held.filter((h) => h.fd !== null);
    const unpassable = held.filter((h) => h.fd === null).map((h) => ({
      kind: h.kind,
      addr: h.addr,
      reason: h.reason ?? "no descriptor",
    }));
    log.info("takeover: handing sockets over", {
      to_pid: pid,
      passed: passable.length,
      not_passed: unpassable.length,
    });
    for (const u of unpassable) {
      log.warn("takeover: cannot pass socket", {
        kind: u.kind,
        addr: formatHostPort(u.addr),
        reason: u.reason,
      });
    }
    try {
      for (let at = 0; at === 0 || at < passable.length; at += MAX_FDS_PER_FRAME) {
        const part = passable.slice(at, at + MAX_FDS_PER_FRAME);
        const last = at + MAX_FDS_PER_FRAME >= passable.length;
        await ch.send(
          message({
            type: "sockets",
            sockets: part.map((h) => ({ kind: h.kind, addr: h.addr })),
            last,
            ...(last ? { unpassable, pid: Deno.pid } : {}),
          }),
          part.map((h) => h.fd!),
        );
      }
      const answer = parseMessage(
        (await ch.receive(this.#options.readyTimeoutMs ?? READY_TIMEOUT_MS, signal)).message,
        ["ready", "abort"],
      );
      if (answer.type === "abort") {
        log.warn("takeover aborted by the new process; still serving", { pid, reason: answer.reason });
        return false;
      }
      // The path is the new process's from here: it puts its own socket there once told to go on.
      this.#listener.unlink();
      await ch.send(message({ type: "draining", drain_timeout_ms: this.#options.drainTimeoutMs }));
    } catch (error) {
      log.warn("takeover failed; still serving", { pid, error: errorMessage(error) });
      return false;
    }
    log.info("taken over: stopping accepting and draining", { by_pid: pid });
    this.#options.handOver(pid);
    return true;
  }

  /** Stops answering and removes the socket file if it is still this process's. */
  async close(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    this.#listener.close();
  }
}

async function trySend(ch: FdChannel, m: unknown): Promise<void> {
  try {
    await ch.send(m);
  } catch { /* the peer went away */ }
}
