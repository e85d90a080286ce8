/**
 * The sessions a node runs. Adding one is all or nothing: the program is checked (with the ports and files other
 * sessions hold), then started; a program with errors or a session that cannot start leaves nothing behind. Adds and
 * removals are serialised, so two uploads cannot both take the same port.
 */
import { absolutePath, allowSources, bool, byteSize, int, type ObjectOf, opt } from "../config/schema.ts";
import { ErrorList, errorMessage, type PositionedError } from "../core/errors.ts";
import { Registry } from "../core/registry.ts";
import { DEFAULT_BUDGETS, type SessionBudgets, type SessionUsage } from "../graph/budgets.ts";
import type { ElementKind, NodeServices } from "../graph/element.ts";
import { RunningSession } from "../graph/executor.ts";
import type { SessionPlan } from "../graph/check.ts";
import { checkProgram, parseAny, type ProgramFormat } from "../graph/program.ts";
import { describeSession } from "../dipronn/session.ts";
import { entryOf, SandboxPool, UPLOAD_PREFIX } from "../graph/uploaded.ts";
import {
  type ProgramInfo,
  SandboxHost,
  type SandboxLimits,
  SandboxLoadError,
  UploadError,
  uploadProblems,
} from "../sandbox/mod.ts";
import type { TimerId } from "../core/clock.ts";
import { SourceAllowList } from "../net/allow.ts";
import type { UdpOptions } from "../net/udp.ts";

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
  /** How long a prepared part holds its reservation without a commit (default 30 s). */
  readonly reservationMs?: number;
  /** Uploaded programs (node.uploads); absent: uploads are refused. */
  readonly uploads?: UploadOptions;
}

/** What a node lets uploaded programs have (lib/node/uploads.ts reads it from node.uploads). */
export interface UploadOptions {
  readonly limits: Partial<SandboxLimits> & { readonly maxModules: number; readonly maxBytes: number };
  /** Sandbox processes of all sessions together. */
  readonly maxProcesses: number;
  /** Bytes of files each sandbox group that declares storage may keep under the data directory; 0: none. */
  readonly storageBytes: number;
  /** The deno executable sandbox children run (default: this process's, when it is deno). */
  readonly deno?: string;
  readonly tempDir?: string;
  /** Loads modules in a sandbox child and answers what each program declares (default: SandboxHost.inspect). */
  readonly inspect?: typeof SandboxHost.inspect;
}

/** Which node runs each AP of a session split across nodes, and which node this is. */
export interface PartPlacement {
  readonly self: string;
  readonly nodeOf: Readonly<Record<string, string>>;
}

/** Where a program comes from, and (for one node's part of a session across nodes) its placement. */
export interface ProgramSource {
  readonly file: string;
  readonly format?: ProgramFormat;
  readonly placement?: PartPlacement;
  /** The modules uploaded with it (file name -> source text), which `ref=upload.NAME` APs run. */
  readonly modules?: Readonly<Record<string, string>>;
  /**
   * A part of a session across nodes: the uploaded kinds of APs other nodes run, by ref, as the coordinator loaded
   * them. This node checks the wiring to those APs against their declared ports and parameters without their code.
   */
  readonly remoteKinds?: Readonly<Record<string, UploadedKind>>;
}

/** An uploaded program as a kind: its module, and the ports, parameters and needs it declared when loaded. */
export interface UploadedKind {
  readonly entry: string;
  readonly info: ProgramInfo;
}

/** The sandbox processes of one session's uploaded APs, made when its program was checked. */
interface Upload {
  readonly kinds: Registry<ElementKind>;
  readonly pool: SandboxPool;
  readonly processes: number;
  readonly programs: ReadonlyMap<string, UploadedKind>;
}

/** What a reload changes in a session table: the sessions it stops and starts, and the settings from then on. */
export interface SessionReloadChange {
  readonly options: SessionTableOptions;
  /** The node's bind address, data directory and UDP settings for sessions started from now on. */
  readonly host: string;
  readonly dataDir: string;
  readonly udp: UdpOptions;
  /** Sessions to stop (each drains, inputs first), by name. */
  readonly stop: readonly string[];
  /**
   * Programs to start, checked in prepare. `replaces`: the running session (one of `stop`) this program's file
   * held before; should the new plan fail to start, that session is started again as it was.
   */
  readonly start: readonly { readonly text: string; readonly file: string; readonly replaces?: string }[];
}

/** A reload's sessions, checked and held. */
export interface SessionReload {
  /** The checked plans of `start`, in order. */
  readonly plans: readonly SessionPlan[];
  /**
   * Stops `stop` (draining until `drain` aborts), then starts the plans; resolves with the ones whose start failed
   * (logged, and listed by `failed()` until a later reload), by name, and which of those were started again as
   * they ran before (a replaced session whose new plan failed: `restored`, by the new plan's name). Never rejects.
   */
  commit(drain: AbortSignal): Promise<{ failed: Map<string, string>; restored: Set<string> }>;
  /** Releases the held plans. */
  abort(): void;
}

interface ReloadCheck {
  readonly stopping: ReadonlySet<string>;
  readonly before: readonly SessionPlan[];
  readonly options: SessionTableOptions;
  readonly host: string;
}

interface Reservation {
  readonly plan: SessionPlan;
  /** The part's uploaded APs: their pool starts with the commit, and closes with an abort or the expiry. */
  readonly upload: Upload | null;
  readonly timer: TimerId;
  readonly file: string;
  readonly expires: number;
}

/** The table's options from the node section. */
export function sessionOptions(cfg: SessionSection & { readonly max_sessions: number }): SessionTableOptions {
  return { maxSessions: cfg.max_sessions, budgets: budgetsOf(cfg), allowSources: cfg.allow_sources };
}

export class SessionTable {
  readonly #sessions = new Map<string, RunningSession>();
  /** The sandbox processes of sessions with uploaded programs. */
  readonly #pools = new Map<string, { pool: SandboxPool; processes: number }>();
  /** Parts prepared and not yet committed: they hold ports, claims and budgets as running sessions do. */
  readonly #prepared = new Map<string, Reservation>();
  readonly #reservationMs: number;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  // A reload changes these for sessions started from then on (`prepareReload`); running ones keep their own.
  #maxSessions: number;
  #budgets: SessionBudgets;
  #allowSources: SourceAllowList;
  #uploads: UploadOptions | null;
  /** Plans a reload checked and holds until its commit or abort (their ports, claims and budgets). */
  readonly #reloading = new Set<SessionPlan>();
  /** Sessions a reload's commit could not start, with why (until a later reload starts or drops them). */
  readonly #failed = new Map<string, string>();

  constructor(
    private node: NodeServices,
    private readonly kinds: Registry<ElementKind>,
    limits: number | SessionTableOptions,
  ) {
    const options = typeof limits === "number" ? { maxSessions: limits } : limits;
    this.#maxSessions = options.maxSessions;
    this.#budgets = options.budgets ?? DEFAULT_BUDGETS;
    this.#allowSources = SourceAllowList.parse(options.allowSources ?? []);
    this.#reservationMs = options.reservationMs ?? 30_000;
    this.#uploads = options.uploads ?? null;
  }

  /**
   * Checks a program against what running sessions, prepared parts and pending reloads hold; throws as `add` does.
   * A reload's check (`as`) leaves out the sessions it stops, counts the plans it checked before, and takes the
   * new section's budgets, limit and bind address.
   */
  #check(text: string, source: ProgramSource, kinds = this.kinds, as?: ReloadCheck): SessionPlan {
    if (this.#closed) throw new SessionConflict("The node is stopping");
    const portsInUse = new Map<number, string>();
    const outputPorts = new Map<number, string>();
    const claimsInUse = new Map<string, string>();
    const inUse = { sockets: 0, vms: 0, saverBytes: 0 };
    const running = [...this.#sessions.values()].filter((s) => !as?.stopping.has(s.plan.name));
    const pending = [...this.#reloading, ...(as?.before ?? [])];
    const held = [
      ...running.map((s) => ({ plan: s.plan, who: `session ${s.plan.name}` })),
      ...[...this.#prepared.values()].map((r) => ({
        plan: r.plan,
        who: `session ${r.plan.name} (prepared)`,
      })),
      ...pending.map((plan) => ({ plan, who: `session ${plan.name} (being reloaded)` })),
    ];
    const budgets = as?.options.budgets ?? this.#budgets;
    const maxSessions = as?.options.maxSessions ?? this.#maxSessions;
    for (const { plan, who } of held) {
      for (const p of plan.ports) portsInUse.set(p, who);
      for (const p of plan.outputPorts) outputPorts.set(p, who);
      for (const c of plan.claims) claimsInUse.set(c, who);
      add(inUse, plan.usage);
    }
    // `placement` reaches planSession through the options (PlanOptions.placement, lib/graph/check.ts).
    const plan = checkProgram(text, {
      ...source,
      kinds,
      portsInUse,
      claimsInUse,
      node: { budgets, inUse, host: as?.host ?? this.node.host, outputPorts },
    });
    const placement = source.placement;
    const foreign = placement ? plan.aps.filter((ap) => placement.nodeOf[ap.name] !== placement.self) : [];
    if (foreign.length) {
      // A planner that does not know placements plans every AP: starting them here would take other nodes' ports.
      throw new SessionConflict(
        `This node cannot plan only its part of session ${plan.name}: APs ${
          foreign.map((a) => a.name).join(", ")
        } belong to other nodes`,
      );
    }
    if (held.some((h) => h.plan.name === plan.name)) {
      throw new SessionConflict(`A session named ${plan.name} is already running; stop it first`);
    }
    if (held.length >= maxSessions) {
      throw new SessionConflict(`This node runs at most ${maxSessions} sessions (node.max_sessions)`);
    }
    return plan;
  }

  /**
   * Checks and starts a program, with the modules uploaded with it; throws ErrorList (its mistakes, and a module
   * that cannot be loaded, at its uploaded file, line and column), UploadError, SessionConflict or StartError.
   */
  add(text: string, source: ProgramSource): Promise<RunningSession> {
    return this.#serial(async () => {
      // A multipart body may hold the program alone: then it is a program like any other.
      const upload = hasModules(source.modules) ? await this.#upload(text, source) : null;
      let plan: SessionPlan;
      try {
        plan = this.#check(text, source, upload?.kinds);
      } catch (error) {
        await upload?.pool.close();
        throw error;
      }
      const session = await this.#launch(plan.name, plan, upload);
      this.node.logger.info("session started", {
        session: plan.name,
        aps: plan.aps.length,
        file: source.file,
      });
      return session;
    });
  }

  /**
   * The first phase of a start across nodes: checks this node's part (`source.placement`) and reserves its ports,
   * claims and budgets without starting anything. The reservation lasts `reservationMs` on the node's clock unless
   * committed or aborted first. Throws as `add` does.
   */
  prepare(id: string, text: string, source: ProgramSource): Promise<SessionPlan> {
    return this.#serial(async () => {
      // A part's uploaded APs are loaded here, in this node's own sandbox and under its own node.uploads.
      const upload = hasModules(source.modules) || source.remoteKinds
        ? await this.#upload(text, source)
        : null;
      let plan: SessionPlan;
      try {
        plan = this.#check(text, source, upload?.kinds);
        if (plan.name !== id) {
          throw new SessionConflict(`The program names session ${plan.name}, not ${id}`);
        }
      } catch (error) {
        await upload?.pool.close();
        throw error;
      }
      const { clock } = this.node;
      const timer = clock.setTimeout(() => {
        if (this.#prepared.get(id)?.timer !== timer) return;
        this.#prepared.delete(id);
        upload?.pool.close().catch(() => {});
        this.node.logger.warn("prepared part released: no commit in time", {
          session: id,
          after_ms: this.#reservationMs,
        });
      }, this.#reservationMs);
      this.#prepared.set(id, {
        plan,
        upload,
        timer,
        file: source.file,
        expires: clock.now() + this.#reservationMs,
      });
      this.node.logger.info("session part prepared", { session: id, aps: plan.aps.length });
      return plan;
    });
  }

  /**
   * The kinds of the modules a program names, loaded in a sandbox of this node as `add` loads them, and the
   * sandbox closed again: what a coordinator checks a session across nodes with before asking any node (it may run
   * none of them itself, so the node's process budget does not apply). Throws UploadError or ErrorList as `add`.
   * Serialised with adds and prepares, so parallel requests load one program at a time instead of starting a
   * sandbox child each.
   */
  uploadedKinds(text: string, source: ProgramSource): Promise<Record<string, UploadedKind>> {
    return this.#serial(async () => {
      const upload = await this.#upload(text, { ...source, placement: undefined, remoteKinds: undefined }, {
        budget: false,
      });
      await upload?.pool.close();
      return Object.fromEntries(upload?.programs ?? []);
    });
  }

  /** The second phase: starts a prepared part. Throws SessionConflict when none is held (never or expired). */
  commit(id: string): Promise<RunningSession> {
    return this.#serial(async () => {
      const held = this.#prepared.get(id);
      if (!held) {
        if (this.#sessions.has(id)) return this.#sessions.get(id)!;
        throw new SessionConflict(`No prepared part of session ${id} (never prepared, aborted, or expired)`);
      }
      this.#prepared.delete(id);
      this.node.clock.clearTimeout(held.timer);
      if (this.#closed) {
        await held.upload?.pool.close();
        throw new SessionConflict("The node is stopping");
      }
      const session = await this.#launch(id, held.plan, held.upload);
      this.node.logger.info("session started", { session: id, aps: held.plan.aps.length, file: held.file });
      return session;
    });
  }

  /** Releases a prepared part; false when none was held. */
  abort(id: string): Promise<boolean> {
    return this.#serial(() => {
      const held = this.#prepared.get(id);
      if (!held) return Promise.resolve(false);
      this.#prepared.delete(id);
      this.node.clock.clearTimeout(held.timer);
      this.node.logger.info("prepared part released", { session: id });
      return (held.upload?.pool.close() ?? Promise.resolve()).then(() => true);
    });
  }

  /**
   * A reload's first phase for the sessions it names: checks `start` in order, as if the sessions named in `stop`
   * were gone and the new options in force, and holds the plans (API uploads meanwhile are checked against them).
   * Throws as `add` does, holding nothing. Sessions not named are untouched.
   */
  prepareReload(change: SessionReloadChange): Promise<SessionReload> {
    return this.#serial(() => {
      const stopping = new Set(change.stop);
      const before: SessionPlan[] = [];
      for (const item of change.start) {
        before.push(this.#check(item.text, { file: item.file }, this.kinds, { stopping, before, ...change }));
      }
      for (const plan of before) this.#reloading.add(plan);
      let settled = false;
      const release = () => {
        settled = true;
        for (const plan of before) this.#reloading.delete(plan);
      };
      return Promise.resolve({
        plans: before,
        commit: (drain: AbortSignal) => {
          if (settled) return Promise.resolve({ failed: new Map(), restored: new Set<string>() });
          return this.#serial(async () => {
            release();
            // What each replaced session ran, and on which node settings and allow-list: should its new plan fail
            // at commit (a port another process took since the check), it starts again as it was, so a reload does
            // not leave the box without a session it had. Not one that writes files (a saver): started again, it
            // would truncate what it just recorded, or be refused because the file exists.
            const previous = new Map(
              change.start.flatMap((item) => {
                const old = item.replaces === undefined ? undefined : this.#sessions.get(item.replaces);
                return old ? [[item.file, old.plan] as const] : [];
              }),
            );
            const was = { node: this.node, allowSources: this.#allowSources };
            this.#apply(change);
            await this.#stopWithin(change.stop, drain);
            const failed = new Map<string, string>();
            const restored = new Set<string>();
            const replacedFailed: { plan: SessionPlan; old: SessionPlan }[] = [];
            for (const [k, plan] of before.entries()) {
              this.#failed.delete(plan.name);
              try {
                if (this.#closed) throw new SessionConflict("The node is stopping");
                const session = await RunningSession.start(plan, this.node, {
                  allowSources: this.#allowSources,
                });
                this.#sessions.set(plan.name, session);
                this.node.logger.info("session started", {
                  session: plan.name,
                  aps: plan.aps.length,
                  file: change.start[k].file,
                });
              } catch (error) {
                failed.set(plan.name, error instanceof Error ? error.message : String(error));
                const old = previous.get(change.start[k].file);
                if (old) replacedFailed.push({ plan, old });
              }
            }
            // Only after every new plan had its turn (they were checked with the old sessions' names and ports
            // free), and only where the name and the ports still are.
            const held = new Set([...this.#sessions.values()].flatMap((s) => s.plan.ports));
            for (const { plan, old } of replacedFailed) {
              let why = failed.get(plan.name)!;
              if (old.claims.length) {
                why += `; session ${old.name} is not started again as it was: it writes files (${
                  old.claims.join(", ")
                }), which a new start would truncate or refuse`;
              } else if (this.#closed || this.#sessions.has(old.name) || old.ports.some((p) => held.has(p))) {
                why +=
                  `; session ${old.name} is not started again as it was: its name or ports are taken now`;
              } else {
                try {
                  const again = await RunningSession.start(old, was.node, {
                    allowSources: was.allowSources,
                  });
                  this.#sessions.set(old.name, again);
                  for (const p of old.ports) held.add(p);
                  restored.add(plan.name);
                  why += `; session ${old.name} runs again as it was before the reload`;
                } catch (second) {
                  why += `; session ${old.name} could not be started again as it was: ${
                    errorMessage(second)
                  }`;
                }
              }
              failed.set(plan.name, why);
            }
            for (const [name, why] of failed) {
              if (!restored.has(name)) this.#failed.set(name, why);
              this.node.logger.error("reload could not start a session", { session: name, error: why });
            }
            return { failed, restored };
          });
        },
        abort: () => {
          if (!settled) release();
        },
      });
    });
  }

  /** The new section's limits, budgets and node settings, for sessions started from now on. */
  #apply(change: SessionReloadChange): void {
    const o = change.options;
    this.#maxSessions = o.maxSessions;
    this.#budgets = o.budgets ?? DEFAULT_BUDGETS;
    this.#allowSources = SourceAllowList.parse(o.allowSources ?? []);
    this.#uploads = o.uploads ?? null;
    this.node = { ...this.node, host: change.host, dataDir: change.dataDir, udp: change.udp };
  }

  /**
   * Stops the named sessions side by side (each drains as `stop` does: inputs first), waiting until they are done or
   * `drain` aborts; one still stopping then is left to finish and logged. A session already gone is skipped.
   */
  async #stopWithin(names: readonly string[], drain: AbortSignal): Promise<void> {
    const stops = names.flatMap((name) => {
      const session = this.#sessions.get(name);
      this.#failed.delete(name);
      if (!session) return [];
      this.#sessions.delete(name);
      return [
        session.stop().then(async () => {
          await this.#closePool(name);
          this.node.logger.info("session stopped", { session: name });
        }),
      ];
    });
    const all = Promise.all(stops);
    all.catch(() => {});
    let onAbort!: () => void;
    const cut = new Promise<false>((resolve) => onAbort = () => resolve(false));
    if (drain.aborted) onAbort();
    else drain.addEventListener("abort", onAbort, { once: true });
    try {
      if (!await Promise.race([all.then(() => true, () => true), cut])) {
        this.node.logger.warn("sessions still stopping at the reload's drain deadline", {
          sessions: names.join(","),
        });
      }
    } finally {
      drain.removeEventListener("abort", onAbort);
    }
  }

  /** Sessions a reload could not start at commit, with why. */
  failed(): ReadonlyMap<string, string> {
    return this.#failed;
  }

  /** Parts prepared and not committed, with when their reservation ends (clock ms). */
  prepared(): { session: string; aps: number; ports: readonly number[]; expires: number }[] {
    return [...this.#prepared.values()].map((r) => ({
      session: r.plan.name,
      aps: r.plan.aps.length,
      ports: r.plan.ports,
      expires: r.expires,
    }));
  }

  /** Counts and traffic totals for the node's usage report. */
  figures(): {
    sessions: number;
    aps: number;
    free_ports: number;
    packets_in: number;
    packets_out: number;
    bytes_in: number;
    bytes_out: number;
  } {
    const used = { sockets: 0, vms: 0, saverBytes: 0 };
    let aps = 0;
    const t = { packets_in: 0, packets_out: 0, bytes_in: 0, bytes_out: 0 };
    for (const s of this.#sessions.values()) {
      add(used, s.plan.usage);
      aps += s.plan.aps.length;
      const status = s.status() as { aps?: { inputs?: PortFigures[]; outputs?: PortFigures[] }[] };
      (status.aps ?? []).forEach((ap, i) => {
        const planned = s.plan.aps[i];
        (ap.inputs ?? []).forEach((p, k) => {
          if (planned?.inputs[k]?.external == null) return;
          t.packets_in += p.packets ?? 0;
          t.bytes_in += p.bytes ?? 0;
        });
        (ap.outputs ?? []).forEach((p, k) => {
          if (!planned?.outputs[k]?.wires.some((w) => w.kind !== "ap")) return;
          t.packets_out += p.packets ?? 0;
          t.bytes_out += p.bytes ?? 0;
        });
      });
    }
    for (const r of this.#prepared.values()) add(used, r.plan.usage);
    return {
      sessions: this.#sessions.size,
      aps,
      free_ports: Math.max(0, this.#budgets.maxSockets - used.sockets),
      ...t,
    };
  }

  remove(name: string): Promise<boolean> {
    return this.#serial(async () => {
      const session = this.#sessions.get(name);
      if (!session) return false;
      this.#sessions.delete(name);
      await session.stop();
      await this.#closePool(name);
      this.node.logger.info("session stopped", { session: name });
      return true;
    });
  }

  /** What running sessions hold against the node-wide budgets, for the node's status. */
  budgets(): Record<string, { used: number; max: number }> {
    const used = { sockets: 0, vms: 0, saverBytes: 0 };
    for (const s of this.#sessions.values()) add(used, s.plan.usage);
    for (const r of this.#prepared.values()) add(used, r.plan.usage);
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
      for (const [name, held] of this.#prepared) {
        this.node.clock.clearTimeout(held.timer);
        this.#prepared.delete(name);
        await held.upload?.pool.close();
      }
      for (const [name, session] of [...this.#sessions].reverse()) {
        this.#sessions.delete(name);
        await session.stop();
        await this.#closePool(name);
        this.node.logger.info("session stopped", { session: name });
      }
    });
  }

  /** Sandbox processes running for uploaded programs, and the most the node runs. */
  processes(): { used: number; max: number } {
    let used = 0;
    for (const p of this.#pools.values()) used += p.processes;
    return { used, max: this.#uploads?.maxProcesses ?? 0 };
  }

  async #closePool(name: string): Promise<void> {
    const held = this.#pools.get(name);
    this.#pools.delete(name);
    this.node.shared?.delete(`sandboxes:${name}`);
    await held?.pool.close();
  }

  /** Starts a checked plan with its sandboxes (closed again when it cannot start); registers both under `name`. */
  async #launch(name: string, plan: SessionPlan, upload: Upload | null | undefined): Promise<RunningSession> {
    let session: RunningSession;
    try {
      session = await RunningSession.start(plan, this.node, {
        allowSources: this.#allowSources,
        sandboxes: upload?.pool,
      });
    } catch (error) {
      await upload?.pool.close();
      throw error;
    }
    if (upload) {
      this.#pools.set(name, { pool: upload.pool, processes: upload.processes });
      // Past the node's stop deadline its children are killed at once (hardStopShared), sandboxes too.
      this.node.shared?.set(`sandboxes:${name}`, upload.pool);
    }
    this.#sessions.set(name, session);
    return session;
  }

  /**
   * The kinds of the modules a program names (`ref=upload.NAME`), from loading them in a sandbox: the upload's
   * size and names are checked first, then the node's process budget, then the modules load (a syntax error is an
   * ErrorList entry at its uploaded file, line and column). A program with syntax errors of its own gets no kinds:
   * the check reports those.
   */
  async #upload(text: string, source: ProgramSource, o: { budget?: boolean } = {}): Promise<Upload | null> {
    const uploads = this.#uploads;
    const modules = source.modules ?? {};
    const placement = source.placement;
    const remote = source.remoteKinds ?? {};
    const read = () => {
      try {
        return describeSession(parseAny(text, source.file, source.format), []);
      } catch {
        return null;
      }
    };
    // A part of a session across nodes loads only the uploaded APs it runs; the others are checked as declared
    // (and a node that runs none needs no node.uploads at all).
    const part = placement ? read() : undefined;
    if (part === null) return null;
    const here = (ap: { readonly name: string }) =>
      !placement || placement.nodeOf[ap.name] === placement.self;
    if (part && !part.aps.some((ap) => here(ap) && isUploaded(ap.ref))) {
      const pool = new SandboxPool({ session: part.name, modules: {} });
      const programs = this.#remote(part.aps.filter((ap) => !here(ap)), remote);
      return { kinds: this.#withUploaded(pool.kinds(programs)), pool, processes: 0, programs };
    }
    if (!uploads) {
      throw new UploadError(["this node takes no uploaded programs (node.uploads.enabled is false)"]);
    }
    if (!uploads.deno && !/(^|\/)deno$/.test(Deno.execPath())) {
      // A binary made by `deno compile` is not a runtime that can run a module with other permissions.
      throw new UploadError([
        `this node runs as ${Deno.execPath()}, which cannot run uploaded modules: set node.uploads.deno to a deno executable`,
      ]);
    }
    if (this.#closed) throw new SessionConflict("The node is stopping");
    const problems = uploadProblems(modules, Object.keys(modules)[0] ?? "", uploads.limits);
    if (problems.length) throw new UploadError(problems);
    const spec = part ?? read();
    if (!spec) return null;
    const local = spec.aps.filter(here);
    const entries = new Map<string, string>();
    const missing: string[] = [];
    for (const ap of local) {
      const entry = entryOf(ap.ref, modules);
      if (entry) entries.set(ap.ref, entry);
      else if (placement && isUploaded(ap.ref)) missing.push(`${ap.name} (ref=${ap.ref})`);
    }
    if (missing.length) {
      // The coordinator's declared kind would pass the check, and the AP would then have no code to run here.
      throw new UploadError([
        `this node runs uploaded AP ${missing.join(", ")} and its module did not come with the part`,
      ]);
    }
    const pool = new SandboxPool({
      session: spec.name,
      modules,
      limits: uploads.limits,
      deno: uploads.deno,
      tempDir: uploads.tempDir,
      metrics: this.node.metrics,
      dataDir: this.node.dataDir,
      storageBytes: uploads.storageBytes,
    });
    const processes = SandboxPool.processes(local);
    const running = this.processes().used +
      [...this.#prepared.values()].reduce((n, r) => n + (r.upload?.processes ?? 0), 0);
    if (o.budget !== false && processes && running + processes > uploads.maxProcesses) {
      throw new SessionConflict(
        `Session ${spec.name} needs ${processes} sandbox processes and the node runs ${running} of at most ${uploads.maxProcesses} (node.uploads.max_processes)`,
      );
    }
    const programs = new Map<string, { entry: string; info: ProgramInfo }>();
    if (entries.size) {
      const list = [...entries];
      let infos: readonly ProgramInfo[];
      try {
        infos = await (uploads.inspect ?? SandboxHost.inspect)({
          name: `${spec.name} (loading)`,
          modules,
          programs: list.map(([ref, entry]) => ({ name: ref, entry })),
          limits: uploads.limits,
          deno: uploads.deno,
          tempDir: uploads.tempDir,
        });
      } catch (error) {
        if (error instanceof SandboxLoadError) {
          throw new ErrorList([error], `An uploaded module of session ${spec.name} cannot be loaded`);
        }
        throw error;
      }
      list.forEach(([ref, entry], k) => programs.set(ref, { entry, info: infos[k] }));
    }
    const others = this.#remote(spec.aps.filter((ap) => !here(ap) && !programs.has(ap.ref)), remote);
    const all = new Map([...programs, ...others]);
    return { kinds: this.#withUploaded(pool.kinds(all)), pool, processes, programs };
  }

  /**
   * The kinds of uploaded APs other nodes run (`aps`), as the coordinator declared them. Their needs are not this
   * node's: it gives them no storage, so a declared `needs.files` is not held against it.
   */
  #remote(
    aps: readonly { readonly ref: string }[],
    remote: Readonly<Record<string, UploadedKind>>,
  ): Map<string, UploadedKind> {
    const out = new Map<string, UploadedKind>();
    for (const { ref } of aps) {
      if (!isUploaded(ref) || !Object.hasOwn(remote, ref)) continue;
      out.set(ref, { entry: remote[ref].entry, info: { ...remote[ref].info, needs: {} } });
    }
    return out;
  }

  /** The node's kinds with a session's uploaded ones. */
  #withUploaded(uploaded: ElementKind[]): Registry<ElementKind> {
    const base = this.kinds.values().filter((k) => !k.name.startsWith(UPLOAD_PREFIX));
    return new Registry<ElementKind>("AP kind", [...base, ...uploaded]);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => {});
    return next;
  }
}

const isUploaded = (ref: string) => ref.startsWith(UPLOAD_PREFIX);

interface PortFigures {
  readonly packets?: number;
  readonly bytes?: number;
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

function hasModules(modules: Readonly<Record<string, string>> | undefined): boolean {
  return modules !== undefined && Object.keys(modules).length > 0;
}
