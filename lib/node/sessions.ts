/**
 * The sessions a node runs. Adding one is all or nothing: the program is checked (with the ports and files other
 * sessions hold), then started; a program with errors or a session that cannot start leaves nothing behind. Adds and
 * removals are serialised, so two uploads cannot both take the same port.
 */
import type { ErrorList, PositionedError } from "../core/errors.ts";
import type { Registry } from "../core/registry.ts";
import type { ElementKind, NodeServices } from "../graph/element.ts";
import { RunningSession } from "../graph/executor.ts";
import { checkProgram, type ProgramFormat } from "../graph/program.ts";

/** A session name already running, or the session limit reached: the request conflicts with the node's state. */
export class SessionConflict extends Error {
  override name = "SessionConflict";
}

export class SessionTable {
  readonly #sessions = new Map<string, RunningSession>();
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(
    private readonly node: NodeServices,
    private readonly kinds: Registry<ElementKind>,
    private readonly maxSessions: number,
  ) {}

  /** Checks and starts a program; throws ErrorList (its mistakes), SessionConflict or StartError. */
  add(text: string, source: { file: string; format?: ProgramFormat }): Promise<RunningSession> {
    return this.#serial(async () => {
      if (this.#closed) throw new SessionConflict("The node is stopping");
      const portsInUse = new Map<number, string>();
      const claimsInUse = new Map<string, string>();
      for (const s of this.#sessions.values()) {
        for (const p of s.plan.ports) portsInUse.set(p, `session ${s.plan.name}`);
        for (const c of s.plan.claims) claimsInUse.set(c, `session ${s.plan.name}`);
      }
      const plan = checkProgram(text, { ...source, kinds: this.kinds, portsInUse, claimsInUse });
      if (this.#sessions.has(plan.name)) {
        throw new SessionConflict(`A session named ${plan.name} is already running; stop it first`);
      }
      if (this.#sessions.size >= this.maxSessions) {
        throw new SessionConflict(`This node runs at most ${this.maxSessions} sessions (node.max_sessions)`);
      }
      const session = await RunningSession.start(plan, this.node);
      this.#sessions.set(plan.name, session);
      this.node.logger.info("session started", {
        session: plan.name,
        aps: plan.aps.length,
        file: source.file,
      });
      return session;
    });
  }

  remove(name: string): Promise<boolean> {
    return this.#serial(async () => {
      const session = this.#sessions.get(name);
      if (!session) return false;
      this.#sessions.delete(name);
      await session.stop();
      this.node.logger.info("session stopped", { session: name });
      return true;
    });
  }

  get(name: string): RunningSession | undefined {
    return this.#sessions.get(name);
  }

  list(): RunningSession[] {
    return [...this.#sessions.values()];
  }

  /** Stops every session, the last started first, after any add or remove under way; later adds are refused. */
  stopAll(): Promise<void> {
    this.#closed = true;
    return this.#serial(async () => {
      for (const [name, session] of [...this.#sessions].reverse()) {
        this.#sessions.delete(name);
        await session.stop();
        this.node.logger.info("session stopped", { session: name });
      }
    });
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => {});
    return next;
  }
}

/** Errors of a rejected program as JSON for the API: each with its place. */
export function errorsJson(error: ErrorList<PositionedError>) {
  return error.errors.map((e) => ({
    file: e.file,
    line: e.line,
    col: e.col,
    message: e.message,
    text: e.format(),
  }));
}
