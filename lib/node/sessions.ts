/**
 * The sessions a node runs. Adding one is all or nothing: the program is checked (with the ports and files other
 * sessions hold), then started; a program with errors or a session that cannot start leaves nothing behind. Adds and
 * removals are serialised, so two uploads cannot both take the same port.
 */
import { absolutePath, allowSources, bool, byteSize, int, type ObjectOf, opt } from "../config/schema.ts";
import type { ErrorList, PositionedError } from "../core/errors.ts";
import type { Registry } from "../core/registry.ts";
import { DEFAULT_BUDGETS, type SessionBudgets, type SessionUsage } from "../graph/budgets.ts";
import type { ElementKind, NodeServices } from "../graph/element.ts";
import { RunningSession } from "../graph/executor.ts";
import { checkProgram, type ProgramFormat } from "../graph/program.ts";
import { SourceAllowList } from "../net/allow.ts";

/** A session name already running, or the session limit reached: the request conflicts with the node's state. */
export class SessionConflict extends Error {
  override name = "SessionConflict";
}

/** Where savers write and players read unless the config says otherwise. */
export const DEFAULT_DATA_DIR = "/var/lib/edgenode";

/**
 * The node config keys of session budgets and data ports (part of the `node:` section): what one uploaded program
 * may make the node do or hold, checked before anything starts (lib/graph/budgets.ts).
 */
export const sessionFields = {
  data_dir: opt(
    absolutePath("an absolute path of a directory for savers' and players' files"),
    DEFAULT_DATA_DIR,
  ),
  max_sends_per_datagram: opt(
    int({ min: 1, max: 1_000_000 }),
    DEFAULT_BUDGETS.maxSendsPerDatagram,
    "deliveries and sends one datagram into a session may lead to (duplicators multiply)",
  ),
  max_sockets_per_session: opt(int({ min: 1, max: 65_536 }), DEFAULT_BUDGETS.maxSocketsPerSession),
  max_sockets: opt(
    int({ min: 1, max: 1_000_000 }),
    DEFAULT_BUDGETS.maxSockets,
    "UDP sockets of all sessions",
  ),
  max_vms_per_session: opt(int({ min: 0, max: 1024 }), DEFAULT_BUDGETS.maxVmsPerSession),
  max_vms: opt(
    int({ min: 0, max: 4096 }),
    DEFAULT_BUDGETS.maxVms,
    "VM groups (worker threads) of all sessions",
  ),
  saver_quota: opt(
    byteSize({ min: 0, max: 2 ** 50 }),
    DEFAULT_BUDGETS.saverQuotaBytes,
    "the sum of every saver's max_bytes on the node",
  ),
  allow_loopback_output: opt(
    bool(),
    DEFAULT_BUDGETS.allowLoopbackOutput,
    "DIPRONN_OUTPUT may go to loopback, the bind address or the node's own session ports",
  ),
  /** DIPRONN_INPUT ports of every session let in only these sources; an input's own `allow_sources` narrows it. */
  allow_sources: allowSources(),
};
export type SessionSection = ObjectOf<typeof sessionFields>;

/** The budgets a node config sets. */
export function budgetsOf(cfg: SessionSection): SessionBudgets {
  return {
    maxSendsPerDatagram: cfg.max_sends_per_datagram,
    maxSocketsPerSession: cfg.max_sockets_per_session,
    maxSockets: cfg.max_sockets,
    maxVmsPerSession: cfg.max_vms_per_session,
    maxVms: cfg.max_vms,
    saverQuotaBytes: cfg.saver_quota,
    allowLoopbackOutput: cfg.allow_loopback_output,
  };
}

export interface SessionTableOptions {
  readonly maxSessions: number;
  /** Default: DEFAULT_BUDGETS. */
  readonly budgets?: SessionBudgets;
  /** Sources every DIPRONN_INPUT lets in (node.allow_sources); empty or absent: any. */
  readonly allowSources?: readonly string[];
}

/** The table's options from the node section. */
export function sessionOptions(cfg: SessionSection & { readonly max_sessions: number }): SessionTableOptions {
  return { maxSessions: cfg.max_sessions, budgets: budgetsOf(cfg), allowSources: cfg.allow_sources };
}

export class SessionTable {
  readonly #sessions = new Map<string, RunningSession>();
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  readonly #maxSessions: number;
  readonly #budgets: SessionBudgets;
  readonly #allowSources: SourceAllowList;

  constructor(
    private readonly node: NodeServices,
    private readonly kinds: Registry<ElementKind>,
    limits: number | SessionTableOptions,
  ) {
    const options = typeof limits === "number" ? { maxSessions: limits } : limits;
    this.#maxSessions = options.maxSessions;
    this.#budgets = options.budgets ?? DEFAULT_BUDGETS;
    this.#allowSources = SourceAllowList.parse(options.allowSources ?? []);
  }

  /** Checks and starts a program; throws ErrorList (its mistakes), SessionConflict or StartError. */
  add(text: string, source: { file: string; format?: ProgramFormat }): Promise<RunningSession> {
    return this.#serial(async () => {
      if (this.#closed) throw new SessionConflict("The node is stopping");
      const portsInUse = new Map<number, string>();
      const outputPorts = new Map<number, string>();
      const claimsInUse = new Map<string, string>();
      const inUse = { sockets: 0, vms: 0, saverBytes: 0 };
      for (const s of this.#sessions.values()) {
        for (const p of s.plan.ports) portsInUse.set(p, `session ${s.plan.name}`);
        for (const p of s.plan.outputPorts) outputPorts.set(p, `session ${s.plan.name}`);
        for (const c of s.plan.claims) claimsInUse.set(c, `session ${s.plan.name}`);
        add(inUse, s.plan.usage);
      }
      const plan = checkProgram(text, {
        ...source,
        kinds: this.kinds,
        portsInUse,
        claimsInUse,
        node: { budgets: this.#budgets, inUse, host: this.node.host, outputPorts },
      });
      if (this.#sessions.has(plan.name)) {
        throw new SessionConflict(`A session named ${plan.name} is already running; stop it first`);
      }
      if (this.#sessions.size >= this.#maxSessions) {
        throw new SessionConflict(`This node runs at most ${this.#maxSessions} sessions (node.max_sessions)`);
      }
      const session = await RunningSession.start(plan, this.node, { allowSources: this.#allowSources });
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

  /** What running sessions hold against the node-wide budgets, for the node's status. */
  budgets(): Record<string, { used: number; max: number }> {
    const used = { sockets: 0, vms: 0, saverBytes: 0 };
    for (const s of this.#sessions.values()) add(used, s.plan.usage);
    const b = this.#budgets;
    return {
      sockets: { used: used.sockets, max: b.maxSockets },
      vms: { used: used.vms, max: b.maxVms },
      saver_bytes: { used: used.saverBytes, max: b.saverQuotaBytes },
    };
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

function add(total: { -readonly [K in keyof SessionUsage]: number }, usage: SessionUsage): void {
  total.sockets += usage.sockets;
  total.vms += usage.vms;
  total.saverBytes += usage.saverBytes;
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
