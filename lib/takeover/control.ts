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
import { ControlListener, effectiveUid, type FdChannel, MAX_FDS_PER_FRAME } from "../net/fd_channel.ts";
import type { SocketRegistry } from "../net/handover.ts";
import { type ControlMessage, message, parseMessage } from "./protocol.ts";

export interface ControlOptions {
  readonly registry: SocketRegistry;
  readonly logger: Logger;
  /** The drain deadline the stop will use (told to the new process). */
  readonly drainTimeoutMs: number;
  /** Called once, when the new process serves: stop accepting and drain. */
  readonly handOver: (pid: number) => void;
  /** How long the new process may take to start serving (default READY_TIMEOUT_MS). */
  readonly readyTimeoutMs?: number;
}

/** How long a connection may take to send its first frame (the "takeover" request). */
export const REQUEST_TIMEOUT_MS = 2_000;
/**
 * How long the new process may take from receiving the sockets to saying "ready" (README, "Binary upgrade"). It is
 * told this in the "sockets" frame; one that is not ready by then gives up and exits 1 (this process goes on serving),
 * so the two never serve side by side for good.
 */
export const READY_TIMEOUT_MS = 60_000;
/** How long a busy or refused peer's answer may wait on a full socket buffer. */
const REFUSE_SEND_MS = 1_000;

export class ControlServer {
  #listener: ControlListener;
  readonly #options: ControlOptions;
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;
  /** The conversation running, if any: a second connection meanwhile is refused at once. */
  #conversation: Promise<void> | null = null;

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

  /**
   * Answers connections until closed or handed over: one conversation at a time; a connection that comes while one
   * runs is answered "refused: busy" at once.
   */
  serve(): void {
    this.#loop ??= (async () => {
      const signal = this.#stop.signal;
      const log = this.#options.logger;
      const onError = (text: string) => log.error("control: accept failed", { error: text });
      while (!signal.aborted) {
        const channel = await this.#listener.accept(signal, onError);
        // Null: stopped, or the listener was replaced (`#reopen`) while this waited on it.
        if (!channel) continue;
        if (this.#conversation) {
          log.warn("control: refused a connection: busy with another takeover", {
            peer_pid: peerPid(channel),
          });
          void refuse(channel, "busy (another takeover is under way)");
          continue;
        }
        this.#conversation = (async () => {
          try {
            if (await this.#converse(channel, signal)) this.#stop.abort();
          } catch (error) {
            log.error("control: conversation failed", { error: errorMessage(error) });
          } finally {
            channel.close();
            this.#conversation = null;
          }
        })();
      }
      await this.#conversation;
    })();
  }

  /** One takeover conversation; true when the process was handed over. */
  async #converse(ch: FdChannel, signal: AbortSignal): Promise<boolean> {
    const log = this.#options.logger;
    const { registry } = this.#options;
    // Only this user may take the process over, whatever the file's permissions let through.
    const peer = ch.peer();
    const uid = effectiveUid();
    if (peer.uid !== uid) {
      log.warn("control: refused a connection from another user", {
        peer_uid: peer.uid,
        peer_pid: peer.pid,
        uid,
      });
      await trySend(ch, message({ type: "refused", reason: `not user ${uid}` }));
      return false;
    }
    let request: Extract<ControlMessage, { type: "takeover" }>;
    try {
      request = parseMessage(
        (await ch.receive(REQUEST_TIMEOUT_MS, { signal, maxFds: 0 })).message,
        ["takeover"],
      );
    } catch (error) {
      log.warn("control: refused a request", { error: errorMessage(error), peer_pid: peer.pid });
      await trySend(ch, message({ type: "refused", reason: errorMessage(error) }));
      return false;
    }
    const pid = request.pid;
    const readyTimeoutMs = this.#options.readyTimeoutMs ?? READY_TIMEOUT_MS;
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
            ...(last ? { unpassable, pid: Deno.pid, ready_timeout_ms: readyTimeoutMs } : {}),
          }),
          part.map((h) => h.fd!),
        );
      }
      const answer = parseMessage(
        (await ch.receive(readyTimeoutMs, { signal, maxFds: 0 })).message,
        ["ready", "abort"],
      );
      if (answer.type === "abort") {
        log.warn("takeover aborted by the new process; still serving", { pid, reason: answer.reason });
        return false;
      }
    } catch (error) {
      log.warn("takeover failed; still serving", { pid, error: errorMessage(error) });
      return false;
    }
    // The path is the new process's from here: it puts its own socket there once told to go on.
    this.#listener.unlink();
    try {
      await ch.send(message({ type: "draining", drain_timeout_ms: this.#options.drainTimeoutMs }));
    } catch (error) {
      // The new process is gone (it will not serve): put a socket back at the path so this one can still be taken
      // over.
      this.#reopen();
      log.warn("takeover failed; still serving", { pid, error: errorMessage(error) });
      return false;
    }
    log.info("taken over: stopping accepting and draining", { by_pid: pid });
    this.#options.handOver(pid);
    return true;
  }

  /** A new listening socket at the path (after the file was removed for a successor that then failed). */
  #reopen(): void {
    const path = this.#listener.path;
    try {
      const next = ControlListener.open(path);
      this.#listener.close();
      this.#listener = next;
    } catch (error) {
      this.#options.logger.error("control socket not made again; this process cannot be taken over", {
        path,
        error: errorMessage(error),
      });
    }
  }

  /** Stops answering and removes the socket file if it is still this process's. */
  async close(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    this.#listener.close();
  }
}

function peerPid(ch: FdChannel): number | string {
  try {
    return ch.peer().pid;
  } catch {
    return "?";
  }
}

/** Answers "refused" without waiting for anything and closes the connection. */
async function refuse(ch: FdChannel, reason: string): Promise<void> {
  try {
    await ch.send(message({ type: "refused", reason }), [], REFUSE_SEND_MS);
  } catch { /* the peer went away */ }
  ch.close();
}

async function trySend(ch: FdChannel, m: unknown): Promise<void> {
  try {
    await ch.send(m, [], REFUSE_SEND_MS);
  } catch { /* the peer went away */ }
}
