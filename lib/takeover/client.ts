/**
 * The new process's side of a takeover (`edgenode --takeover PATH`): connect to the running process's control
 * socket, receive its sockets and put them in this process's registry (lib/net/handover.ts), where the openers of
 * this config find them (a socket whose kind and address match is adopted instead of bound). After this process has
 * started, `commit()` closes the passed sockets its config does not use (listing them), tells the running process to
 * drain, and waits for its answer; a failed start calls `abort()`, and the running process goes on untouched.
 *
 * The running process says how long it waits for "ready". A commit after that deadline, or one the running process
 * does not answer with "draining", fails (StartError): the caller stops and exits 1, because the running process goes
 * on serving, and two processes must not serve side by side for good.
 */
import { errorMessage, StartError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { formatHostPort } from "../net/address.ts";
import {
  closeFd,
  connectControl,
  effectiveUid,
  type FdChannel,
  inspectSocket,
  MAX_FDS_PER_FRAME,
} from "../net/fd_channel.ts";
import type { InheritedSocket, SocketRegistry } from "../net/handover.ts";
import { READY_TIMEOUT_MS } from "./control.ts";
import { message, parseMessage, type UnpassableEntry } from "./protocol.ts";

export interface TakeoverOptions {
  readonly registry: SocketRegistry;
  readonly logger: Logger;
  /** How long to wait for each answer of the running process (default 10 s). */
  readonly timeoutMs?: number;
}

const ANSWER_TIMEOUT_MS = 10_000;

export class Takeover {
  readonly #ch: FdChannel;
  readonly #options: TakeoverOptions;
  /** The running process's pid. */
  readonly pid: number | null;
  /** What it holds and could not pass: this process binds those beside it. */
  readonly unpassable: readonly UnpassableEntry[];
  /** How many descriptors came. */
  readonly received: number;
  /** When the running process stops waiting for "ready" (Date.now() time). */
  readonly readyBy: number;
  #done = false;

  private constructor(
    ch: FdChannel,
    options: TakeoverOptions,
    pid: number | null,
    unpassable: readonly UnpassableEntry[],
    received: number,
    readyBy: number,
  ) {
    this.#ch = ch;
    this.#options = options;
    this.pid = pid;
    this.unpassable = unpassable;
    this.received = received;
    this.readyBy = readyBy;
  }

  /** Connects and receives the sockets; StartError saying why when it cannot (nothing was changed anywhere). */
  static async begin(path: string, options: TakeoverOptions): Promise<Takeover> {
    const { registry, logger } = options;
    const timeout = options.timeoutMs ?? ANSWER_TIMEOUT_MS;
    const fail = (why: string) => new StartError(`Cannot take over from "${path}": ${why}`);
    let ch: FdChannel;
    try {
      ch = connectControl(path);
    } catch (error) {
      throw fail(errorMessage(error).replace(/^Cannot connect to control socket "[^"]*": /, ""));
    }
    const inherited: InheritedSocket[] = [];
    try {
      // Sockets are taken only from a process of this user (whatever the file's permissions let through).
      const peer = ch.peer();
      const uid = effectiveUid();
      if (peer.uid !== uid) {
        throw new Error(`the process answering there runs as uid ${peer.uid}, not ${uid}`);
      }
      await ch.send(message({ type: "takeover", pid: Deno.pid }));
      let unpassable: readonly UnpassableEntry[] = [];
      let pid: number | null = null;
      let readyTimeoutMs = READY_TIMEOUT_MS;
      for (;;) {
        const frame = await ch.receive(timeout, { maxFds: MAX_FDS_PER_FRAME });
        let m;
        try {
          m = parseMessage(frame.message, ["sockets", "refused"]);
        } catch (error) {
          for (const fd of frame.fds) closeFd(fd);
          try {
            await ch.send(message({ type: "abort", reason: errorMessage(error) }));
          } catch { /* gone */ }
          throw error;
        }
        if (m.type === "refused") {
          for (const fd of frame.fds) closeFd(fd);
          throw new Error(`the running process refused: ${m.reason}`);
        }
        if (m.last && m.pid !== peer.pid) {
          for (const fd of frame.fds) closeFd(fd);
          throw new Error(`the peer says it is pid ${m.pid ?? "?"}, the kernel says ${peer.pid}`);
        }
        if (frame.fds.length !== m.sockets.length) {
          for (const fd of frame.fds) closeFd(fd);
          throw new Error(`${frame.fds.length} descriptors came for ${m.sockets.length} sockets`);
        }
        m.sockets.forEach((said, i) => {
          const fd = frame.fds[i];
          // What the kernel says the descriptor is decides where it goes, not what the peer says.
          const facts = inspectSocket(fd);
          const usable = facts.addr && facts.kind === said.kind && (facts.kind === "udp" || facts.listening);
          if (!usable) {
            closeFd(fd);
            logger.warn("takeover: passed descriptor is not what was said; closed", {
              said: `${said.kind} ${formatHostPort(said.addr)}`,
              is: facts.addr ? `${facts.kind} ${formatHostPort(facts.addr)}` : facts.kind,
            });
            return;
          }
          inherited.push({ kind: said.kind, addr: facts.addr!, fd });
        });
        if (m.last) {
          unpassable = m.unpassable ?? [];
          pid = m.pid ?? null;
          readyTimeoutMs = m.ready_timeout_ms ?? READY_TIMEOUT_MS;
          break;
        }
      }
      registry.inherit(inherited);
      logger.info("takeover: received sockets", { from_pid: pid ?? "?", sockets: inherited.length });
      for (const u of unpassable) {
        logger.warn("takeover: not passed; binding beside the running process", {
          kind: u.kind,
          addr: formatHostPort(u.addr),
          reason: u.reason,
        });
      }
      // Counted from receipt: the running process started its wait a little earlier.
      return new Takeover(ch, options, pid, unpassable, inherited.length, Date.now() + readyTimeoutMs);
    } catch (error) {
      for (const s of inherited) closeFd(s.fd);
      ch.close();
      throw fail(errorMessage(error));
    }
  }

  /** Passed sockets no opener of this config took: closed here (the running process keeps its own) and listed. */
  closeUnclaimed(): InheritedSocket[] {
    const left = this.#options.registry.unclaimed();
    for (const s of left) {
      closeFd(s.fd);
      this.#options.logger.warn("takeover: passed socket not in this config; closed", {
        kind: s.kind,
        addr: formatHostPort(s.addr),
      });
    }
    return left;
  }

  /**
   * Tells the running process that this one serves, and waits for it to say it drains. Throws StartError when it
   * cannot be sure the running process stops: past the ready deadline (this sends "abort" instead of "ready"), or no
   * "draining" came. The caller then stops and exits: the running process goes on serving.
   */
  async commit(): Promise<void> {
    if (this.#done) return;
    const late = Date.now() - this.readyBy;
    if (late >= 0) {
      const reason = `started ${late} ms after the running process stopped waiting`;
      await this.abort(reason);
      throw new StartError(`Cannot take over: ${reason}; the running process goes on serving`);
    }
    this.#done = true;
    this.closeUnclaimed();
    try {
      await this.#ch.send(message({ type: "ready" }));
      const frame = await this.#ch.receive(this.#options.timeoutMs ?? ANSWER_TIMEOUT_MS, { maxFds: 0 });
      const m = parseMessage(frame.message, ["draining"]);
      this.#options.logger.info("takeover: the running process drains", {
        pid: this.pid ?? "?",
        drain_timeout_ms: m.drain_timeout_ms,
      });
    } catch (error) {
      throw new StartError(
        `Cannot take over: the running process did not say it drains (${
          errorMessage(error)
        }); it goes on serving`,
      );
    } finally {
      this.#ch.close();
    }
  }

  /** Tells the running process to go on (this one failed to start) and gives back what was not used. */
  async abort(reason: string): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    for (const s of this.#options.registry.unclaimed()) closeFd(s.fd);
    try {
      await this.#ch.send(message({ type: "abort", reason }));
    } catch { /* gone: it goes on anyway */ }
    this.#ch.close();
  }
}
