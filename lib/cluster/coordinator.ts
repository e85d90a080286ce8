/**
 * The control unit of a start across nodes, on the node a session request reaches. It asks every member for its
 * usage, places the session's APs (lib/cluster/placement.ts), and starts it all or nothing: prepare to every node
 * holding a part (itself included) in parallel, each with a timeout; then commit to all. If any node refuses, times
 * out or fails at commit, every part is aborted or stopped, so nothing stays running anywhere. Each step's outcome
 * per node is kept for the answer and /status. A member declared lost (lib/cluster/heartbeat.ts) has its sessions
 * either stopped everywhere or started again without it, per the session's `on_node_loss`.
 *
 * With etcd (`store`), a session is written there before any node is asked to prepare, in a transaction that
 * requires the name to be new: of two control units starting one name at once, exactly one goes on. A failed start
 * removes it again; a running one is marked so; a stop removes it. A session written by another control unit can be
 * adopted (`adopt`): this node coordinates it from then on (a takeover, a stop asked here, or its restart). A
 * takeover is how the session outlives its coordinator: the old coordinator's own part waits in etcd for that node's
 * restart instead of being handled by `on_node_loss`, which applies to the loss of any other node.
 */
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import { describeSession, type SessionSpec } from "../dipronn/session.ts";
import { parseAny, type ProgramFormat } from "../graph/program.ts";
import type { Member, UndoResult } from "./members.ts";
import {
  MAX_SESSION_WRITE,
  SessionExistsError,
  type SessionSource,
  type SessionState as StoredState,
  SessionTooLarge,
} from "./store.ts";
import type { ClusterStore } from "./store.ts";
import { errorMessage } from "../core/errors.ts";
import { UploadError } from "../sandbox/mod.ts";
import { PartRefused, type PartRequest } from "./parts.ts";
import type { UploadedKind } from "../node/sessions.ts";
import { UPLOAD_PREFIX } from "../graph/uploaded.ts";
import { PeerError } from "./peers.ts";
import {
  type CrossLink,
  crossLinks,
  place as placeSession,
  type Placement,
  PlacementError,
  type PlacementInput,
} from "./placement.ts";
import type { NodeUsage } from "./usage.ts";

export const NODE_LOSS_ACTIONS = ["stop", "restart"] as const;
export type NodeLossAction = typeof NODE_LOSS_ACTIONS[number];

/** Sessions a coordinator keeps; finished ones beyond MAX_FINISHED are forgotten, oldest first. */
export const MAX_CLUSTER_SESSIONS = 1000;
export const MAX_FINISHED = 64;
const MAX_EVENTS = 32;
/** A stale part's abort is tried again on the node's next answer, at most this often, doubling up to the cap. */
export const STALE_RETRY_MS = 1000;
export const STALE_RETRY_MAX_MS = 60_000;
/** A part's reason while its node is lost and the part kept in etcd for the node's restart. */
const WAITING = "node lost with the coordinator; its part comes back when the node restarts (kept in etcd)";

/** A member gave no answer within the step's timeout. */
export class TimedOut extends Error {
  override name = "TimedOut";
}

/** A session of this name is coordinated here already. */
export class ClusterConflict extends Error {
  override name = "ClusterConflict";
}

/** The request's `near` names a node that is not a member, or one twice. */
export class UnknownNear extends Error {
  override name = "UnknownNear";
}

/**
 * A stop asked while the session's start (or restart) is under way: refused, since prepares in flight could still
 * land and commit after an abort made now. The start's own outcome decides; a stop after it works.
 */
export class SessionBusy extends ClusterConflict {
  override name = "SessionBusy";
  constructor(readonly session: string, readonly state: SessionState) {
    super(`Cannot stop session ${session}: it is ${state}; try again`);
  }
}

export type PartState =
  | "preparing"
  | "prepared"
  | "committing"
  | "committed"
  | "refused"
  | "timed out"
  | "unreachable"
  | "failed"
  | "stopped"
  | "lost";

export interface NodeOutcome {
  aps: string[];
  state: PartState;
  reason?: string;
  /** Errors of the program as the node found them (a refused prepare). */
  errors?: unknown;
  /** What undoing this part did: released (prepared), stopped (running), none, or why it could not be undone. */
  undone?: string;
  /** The uploaded modules sent to this node with its part (it runs an uploaded AP); absent: none were sent. */
  modules?: string[];
}

export type SessionState = "starting" | "running" | "failed" | "stopping" | "stopped" | "restarting";

export interface ClusterSession {
  readonly name: string;
  readonly text: string;
  readonly file: string;
  readonly format: ProgramFormat;
  readonly onNodeLoss: NodeLossAction;
  /** Nodes nearest to the receivers, best first, as the request named them (placement's `near`); kept for restarts. */
  readonly near: readonly string[];
  attempt: string;
  state: SessionState;
  reason?: string;
  placement: Placement | null;
  nodes: Record<string, NodeOutcome>;
  /** Usage figures the placement was made from. */
  usage: NodeUsage[];
  /** This coordinator wrote the session to etcd in this start (a failed start removes it again). */
  stored: boolean;
  /**
   * The modules uploaded with the session and their kinds as loaded here; kept for restarts and etcd, and dropped
   * once the session is stopped or failed (its outcome stays a while; the modules are of no more use).
   */
  upload?: SessionUpload;
  readonly events: { at: string; text: string }[];
}

/** A session's uploaded modules (file name -> source) and the kinds they declared when loaded, by ref. */
export interface SessionUpload {
  readonly modules: Readonly<Record<string, string>>;
  readonly kinds: Readonly<Record<string, UploadedKind>>;
}

/** What a start, a stop or a plan answers with. */
export interface Outcome {
  readonly session: string;
  readonly state: SessionState;
  readonly reason?: string;
  readonly attempt: string;
  readonly on_node_loss: NodeLossAction;
  readonly placement: Placement | null;
  readonly nodes: Record<string, NodeOutcome>;
  readonly events: readonly { at: string; text: string }[];
}

export interface CoordinatorOptions {
  readonly self: string;
  /** Every member, this node included. */
  readonly members: readonly Member[];
  readonly clock: Clock;
  readonly logger: Logger;
  /** Each prepare, commit, abort and usage question waits at most this long. */
  readonly stepTimeoutMs: number;
  readonly place?: (spec: SessionSpec, input: PlacementInput) => Placement;
  /** Placement's load threshold (PlacementLimits.threshold); default placement's own. */
  readonly loadThreshold?: number;
  /** When a program does not say (`on_node_loss`): stop. */
  readonly onNodeLoss?: NodeLossAction;
  /** With etcd: sessions are written there, and only a name new there starts. */
  readonly store?: ClusterStore;
  /** With etcd: whether the node is a live member there (a node heartbeats once called lost may be back). */
  readonly member?: (node: string) => boolean;
  /** With etcd: whether the node's lease expired since it was seen (left out of placement like a lost node). */
  readonly gone?: (node: string) => boolean;
  /**
   * Loads a session's uploaded modules in a sandbox of this node and answers their kinds (SessionTable's
   * uploadedKinds); throws UploadError or ErrorList (a module that does not load, at its file, line and column).
   * Absent: sessions with modules are refused.
   */
  readonly inspect?: (
    text: string,
    source: { file: string; format: ProgramFormat; modules: Readonly<Record<string, string>> },
  ) => Promise<Record<string, UploadedKind>>;
}

/** A session as etcd holds it, enough to coordinate it here. */
export interface AdoptedSession {
  readonly program: string;
  readonly placement: Readonly<Record<string, string>>;
  readonly state: StoredState | undefined;
  readonly source: SessionSource | undefined;
  readonly upload?: SessionUpload;
}

export interface StartSource {
  readonly file: string;
  readonly format: ProgramFormat;
  readonly onNodeLoss?: NodeLossAction;
  /** Nodes nearest to the session's receivers, best first (member names). */
  readonly near?: readonly string[];
  /** The modules uploaded with the program (file name -> source), which its `ref=upload.NAME` APs run. */
  readonly modules?: Readonly<Record<string, string>>;
}

/** The nodes that run an uploaded AP of the session, by name. */
export function uploadNodes(spec: SessionSpec, nodeOf: Readonly<Record<string, string>>): string[] {
  const nodes = spec.aps.filter((ap) => ap.ref.startsWith(UPLOAD_PREFIX)).map((ap) => nodeOf[ap.name]);
  return [...new Set(nodes.filter((n) => typeof n === "string"))].sort();
}

/** Settles with `p`, or rejects with TimedOut after `ms` on `clock`. */
export function withTimeout<T>(clock: Clock, ms: number, p: Promise<T>, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const id = clock.setTimeout(() => reject(new TimedOut(`${what}: no answer within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clock.clearTimeout(id);
        resolve(v);
      },
      (e) => {
        clock.clearTimeout(id);
        reject(e);
      },
    );
  });
}

export function attemptId(): string {
  return [...crypto.getRandomValues(new Uint8Array(8))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The program's own `on_node_loss = stop | restart`, if it says. */
function programNodeLoss(spec: SessionSpec): NodeLossAction | undefined {
  return spec.onNodeLoss ?? undefined;
}

/** How a failed step reads in an outcome. */
function failure(error: unknown): Pick<NodeOutcome, "state" | "reason" | "errors"> {
  if (error instanceof PartRefused) return { state: "refused", reason: error.reason, errors: error.errors };
  if (error instanceof TimedOut) return { state: "timed out", reason: error.message };
  if (error instanceof PeerError) {
    return { state: error.kind === "timeout" ? "timed out" : "unreachable", reason: error.message };
  }
  return { state: "failed", reason: error instanceof Error ? error.message : String(error) };
}

export class Coordinator {
  readonly #members: Map<string, Member>;
  readonly #sessions = new Map<string, ClusterSession>();
  readonly #lost = new Set<string>();
  /** Parts left on a node when it was declared lost: stopped there if it comes back. */
  readonly #stale = new Map<string, Map<string, string>>();
  /** Per node with stale parts: failed abort rounds so far and when the next may go (clock ms). */
  readonly #staleRetry = new Map<string, { tries: number; next: number }>();
  readonly #retrying = new Set<string>();
  readonly #place: (spec: SessionSpec, input: PlacementInput) => Placement;

  constructor(private readonly o: CoordinatorOptions) {
    this.#members = new Map(o.members.map((m) => [m.name, m]));
    if (!this.#members.has(o.self)) throw new Error(`The members must include this node (${o.self})`);
    this.#place = o.place ?? placeSession;
  }

  #input(nodes: NodeUsage[], near: readonly string[] = []): PlacementInput {
    const t = this.o.loadThreshold;
    return {
      self: this.o.self,
      nodes,
      ...(near.length ? { near } : {}),
      ...(t === undefined ? {} : { limits: { threshold: t } }),
    };
  }

  /** Checks the request's `near` list: member names, no repeats. Throws UnknownNear. */
  #near(near: readonly string[] | undefined): readonly string[] {
    const list = near ?? [];
    for (const n of list) {
      if (!this.#members.has(n)) throw new UnknownNear(`Cannot place near ${n}: not a node of this cluster`);
    }
    if (new Set(list).size !== list.length) throw new UnknownNear("Cannot place near a node named twice");
    return list;
  }

  /** Reads a program as the coordinator does; throws ErrorList with its mistakes. */
  #spec(text: string, source: { file: string; format: ProgramFormat }): SessionSpec {
    return describeSession(parseAny(text, source.file, source.format));
  }

  /**
   * Loads the modules uploaded with a program here, before any node is asked anything: a module that does not
   * load is refused at its file, line and column (ErrorList), an upload this node does not take with UploadError.
   */
  async #upload(
    text: string,
    source: { file: string; format: ProgramFormat; modules?: Readonly<Record<string, string>> },
  ): Promise<SessionUpload | undefined> {
    if (!source.modules) return undefined;
    if (!this.o.inspect) throw new UploadError(["this node cannot load uploaded modules"]);
    const modules = source.modules;
    return {
      modules,
      kinds: await this.o.inspect(text, { file: source.file, format: source.format, modules }),
    };
  }

  /**
   * With etcd: throws SessionTooLarge when the session's keys would not fit in the transaction that creates it
   * (MAX_SESSION_WRITE), before any node is asked. The placement is not made yet: every AP is counted on the
   * member with the longest name, which its placement and parts cannot exceed by more than a few keys.
   */
  #fits(
    spec: SessionSpec,
    text: string,
    source: { file: string; format: ProgramFormat },
    upload?: SessionUpload,
  ): void {
    const store = this.o.store;
    if (!store) return;
    const longest = [...this.#members.keys()].reduce((a, b) => b.length > a.length ? b : a);
    const bytes = store.sessionWriteBytes(
      spec.name,
      text,
      Object.fromEntries(spec.aps.map((ap) => [ap.name, longest])),
      {
        node: this.o.self,
        attempt: attemptId(),
        source: { file: source.file, format: source.format, on_node_loss: "restart" },
        ...(upload ? { upload } : {}),
      },
    );
    if (bytes > MAX_SESSION_WRITE) throw new SessionTooLarge(spec.name, bytes);
  }

  /** Usage of every member not known lost; those that do not answer are left out, with why. */
  async #usage(): Promise<{ usage: NodeUsage[]; missing: Record<string, string> }> {
    const candidates = [...this.#members.values()].filter((m) =>
      !this.#lost.has(m.name) && !this.o.gone?.(m.name)
    );
    const answers = await Promise.allSettled(
      candidates.map((m) =>
        withTimeout(this.o.clock, this.o.stepTimeoutMs, m.usage(this.o.stepTimeoutMs), `usage of ${m.name}`)
      ),
    );
    const usage: NodeUsage[] = [];
    const missing: Record<string, string> = {};
    answers.forEach((a, i) => {
      if (a.status === "fulfilled") usage.push(a.value);
      else missing[candidates[i].name] = failure(a.reason).reason ?? "no answer";
    });
    for (const lost of this.#lost) missing[lost] = "declared lost";
    for (const m of this.#members.keys()) {
      if (!this.#lost.has(m) && this.o.gone?.(m)) missing[m] = "its etcd lease expired";
    }
    return { usage, missing };
  }

  /** The placement a start would make now, without starting anything (the dry run). */
  async plan(
    text: string,
    source: {
      file: string;
      format: ProgramFormat;
      near?: readonly string[];
      modules?: Readonly<Record<string, string>>;
    },
  ): Promise<
    {
      placement: Placement;
      links: CrossLink[];
      usage: NodeUsage[];
      left_out: Record<string, string>;
      modules_to?: string[];
    }
  > {
    const spec = this.#spec(text, source);
    const near = this.#near(source.near);
    const upload = await this.#upload(text, source);
    this.#fits(spec, text, source, upload);
    const { usage, missing } = await this.#usage();
    const placement = this.#place(spec, this.#input(usage, near));
    return {
      placement,
      links: crossLinks(spec, placement),
      usage,
      left_out: missing,
      ...(upload ? { modules_to: uploadNodes(spec, placement.nodeOf) } : {}),
    };
  }

  /**
   * Starts a session across nodes, all or nothing. Throws ErrorList (the program's mistakes, nothing asked of any
   * node) or ClusterConflict; otherwise the outcome says whether it runs and what each node answered.
   */
  async start(text: string, source: StartSource): Promise<Outcome> {
    const spec = this.#spec(text, source);
    const near = this.#near(source.near);
    const upload = await this.#upload(text, source);
    this.#fits(spec, text, source, upload);
    const known = this.#sessions.get(spec.name);
    if (known && known.state !== "failed" && known.state !== "stopped") {
      throw new ClusterConflict(`Session ${spec.name} is ${known.state} already across nodes; stop it first`);
    }
    this.#forgetFinished(spec.name);
    if (this.#sessions.size >= MAX_CLUSTER_SESSIONS) {
      throw new ClusterConflict(`This node coordinates at most ${MAX_CLUSTER_SESSIONS} sessions`);
    }
    const session: ClusterSession = {
      name: spec.name,
      text,
      file: source.file,
      format: source.format,
      onNodeLoss: source.onNodeLoss ?? programNodeLoss(spec) ?? this.o.onNodeLoss ?? "stop",
      near,
      attempt: attemptId(),
      state: "starting",
      placement: null,
      nodes: {},
      usage: [],
      events: [],
      stored: false,
      ...(upload ? { upload } : {}),
    };
    this.#sessions.set(spec.name, session);
    await this.#run(session, spec, "create");
    return this.outcome(session);
  }

  /**
   * Coordinates here a session another control unit wrote to etcd (a takeover, a stop asked here, a restart of
   * its coordinator). Its parts are taken as running, except on `waiting` nodes (lost, kept in etcd until they
   * come back and restore them).
   */
  adopt(
    name: string,
    stored: AdoptedSession,
    o: { reason: string; waiting?: readonly string[] },
  ): ClusterSession {
    const known = this.#sessions.get(name);
    if (known && known.state !== "failed" && known.state !== "stopped") return known;
    const format = stored.source?.format === "yaml" ? "yaml" : "dipronn";
    const loss = stored.source?.on_node_loss;
    const byNode = new Map<string, string[]>();
    for (const [ap, node] of Object.entries(stored.placement)) {
      byNode.set(node, [...(byNode.get(node) ?? []), ap]);
    }
    const waiting = new Set(o.waiting ?? []);
    const session: ClusterSession = {
      name,
      text: stored.program,
      file: stored.source?.file ?? "<etcd>",
      format,
      onNodeLoss: (NODE_LOSS_ACTIONS as readonly string[]).includes(loss ?? "")
        ? loss as NodeLossAction
        : this.o.onNodeLoss ?? "stop",
      near: [],
      attempt: stored.state?.attempt ?? attemptId(),
      state: "running",
      placement: { session: name, nodeOf: { ...stored.placement }, why: {} },
      nodes: Object.fromEntries(
        [...byNode].map(([n, aps]) => [
          n,
          waiting.has(n)
            ? { aps, state: "lost" as PartState, reason: WAITING }
            : { aps, state: "committed" as PartState },
        ]),
      ),
      usage: [],
      events: [],
      stored: false,
      ...(stored.upload ? { upload: stored.upload } : {}),
    };
    this.#sessions.set(name, session);
    this.#event(session, o.reason);
    this.o.logger.info("session coordinated here from etcd", { session: name, reason: o.reason });
    return session;
  }

  /**
   * Another control unit removed the session from etcd (stopped it: it reads "stopped" here, saying so) or
   * coordinates it now (`to`: it is forgotten here, and that node's /status shows it).
   */
  release(name: string, reason: string, o: { to?: string } = {}): void {
    const session = this.#sessions.get(name);
    if (!session || session.state === "failed" || session.state === "stopped") return;
    // This node's own start or stop under way: its own outcome decides.
    if (session.state === "starting" || session.state === "stopping") return;
    if (o.to !== undefined) {
      this.#sessions.delete(name);
      this.o.logger.info("session coordinated elsewhere now", { session: name, by: o.to });
      return;
    }
    session.state = "stopped";
    session.reason = reason;
    delete session.upload;
    this.#event(session, reason);
  }

  /** Places and starts `session` (a first start, or a restart without lost nodes). */
  async #run(session: ClusterSession, spec: SessionSpec, mode: "create" | "update"): Promise<void> {
    const { usage, missing } = await this.#usage();
    session.usage = usage;
    try {
      session.placement = this.#place(spec, this.#input(usage, session.near));
    } catch (error) {
      if (!(error instanceof PlacementError)) throw error;
      const left = Object.entries(missing).map(([n, why]) => `${n}: ${why}`);
      this.#finish(
        session,
        "failed",
        `${error.message}${left.length ? ` (left out: ${left.join("; ")})` : ""}`,
      );
      return;
    }
    const byNode = new Map<string, string[]>();
    for (const [ap, node] of Object.entries(session.placement.nodeOf)) {
      byNode.set(node, [...(byNode.get(node) ?? []), ap]);
    }
    session.nodes = Object.fromEntries(
      [...byNode].map(([n, aps]) => [n, { aps, state: "preparing" as PartState }]),
    );
    this.#event(session, `attempt ${session.attempt}: parts on ${[...byNode.keys()].join(", ")}`);
    if (this.o.store && !await this.#write(session, mode)) return;
    const req: PartRequest = {
      text: session.text,
      file: session.file,
      format: session.format,
      nodeOf: session.placement.nodeOf,
      coordinator: this.o.self,
      attempt: session.attempt,
      ...(session.upload ? { kinds: session.upload.kinds } : {}),
    };
    // Modules go only to the nodes that run an uploaded AP, all of them (a module may import the others); every
    // node gets the kinds, to check the wiring to uploaded APs it does not run.
    const withModules = new Set(session.upload ? uploadNodes(spec, session.placement.nodeOf) : []);
    const reqFor = (node: string): PartRequest =>
      withModules.has(node) ? { ...req, modules: session.upload!.modules } : req;
    for (const n of withModules) session.nodes[n].modules = Object.keys(session.upload!.modules);
    const t = this.o.stepTimeoutMs;
    const step = (node: string, what: string, call: (m: Member) => Promise<unknown>, done: PartState) => {
      const outcome = session.nodes[node];
      const member = this.#members.get(node);
      if (!member) {
        Object.assign(outcome, { state: "unreachable", reason: `${node} is not a member of this cluster` });
        return Promise.resolve();
      }
      return withTimeout(this.o.clock, t, call(member), `${what} on ${node}`).then(
        () => void (outcome.state = done),
        (error) => void Object.assign(outcome, failure(error)),
      );
    };
    const name = session.name;
    await Promise.all(
      [...byNode.keys()].map((n) => step(n, "prepare", (m) => m.prepare(name, reqFor(n), t), "prepared")),
    );
    if (Object.values(session.nodes).every((n) => n.state === "prepared")) {
      for (const n of Object.values(session.nodes)) n.state = "committing";
      await Promise.all(
        [...byNode.keys()].map((n) =>
          step(n, "commit", (m) => m.commit(name, session.attempt, t), "committed")
        ),
      );
    }
    const bad = Object.entries(session.nodes).filter(([, n]) => n.state !== "committed");
    if (bad.length === 0) {
      session.state = "running";
      this.#event(session, "running on every node");
      await this.#setStored(session, "running");
      this.o.logger.info("session started across nodes", {
        session: name,
        nodes: [...byNode.keys()].join(","),
      });
      return;
    }
    const pending: PartState[] = ["preparing", "prepared", "committing"];
    const [first, firstOutcome] = bad.find(([, n]) => !pending.includes(n.state)) ?? bad[0];
    await this.#undo(session, session.attempt);
    if (session.stored || mode === "update") await this.#unstore(session);
    this.#finish(
      session,
      "failed",
      `node ${first} ${firstOutcome.state}: ${firstOutcome.reason ?? ""}`.trim(),
    );
  }

  /**
   * Writes the session to etcd before any part is prepared: as new (refused when the name exists) or, for a
   * restart without a lost node, as a new placement. False (the session failed, nothing asked of any node) when
   * etcd refused or could not be reached.
   */
  async #write(session: ClusterSession, mode: "create" | "update"): Promise<boolean> {
    const store = this.o.store!;
    const nodeOf = session.placement!.nodeOf;
    try {
      if (mode === "create") {
        await store.putSession(session.name, session.text, nodeOf, {
          node: this.o.self,
          state: "starting",
          attempt: session.attempt,
          source: { file: session.file, format: session.format, on_node_loss: session.onNodeLoss },
          ...(session.upload ? { upload: session.upload } : {}),
        });
        session.stored = true;
      } else {
        const current = await store.session(session.name);
        if (!current) throw new Error("it was removed from etcd meanwhile");
        await store.updatePlacement(session.name, nodeOf, current.placementRevision);
        await store.setState(session.name, {
          state: "restarting",
          node: this.o.self,
          attempt: session.attempt,
        });
      }
      return true;
    } catch (error) {
      for (const n of Object.values(session.nodes)) n.state = "failed";
      if (error instanceof SessionExistsError) {
        for (const n of Object.values(session.nodes)) n.reason = "not asked: the session exists in etcd";
        this.#finish(session, "failed", `${error.message} (started by another control unit)`);
      } else {
        const reason = `Cannot write session ${session.name} to etcd: ${errorMessage(error)}`;
        for (const n of Object.values(session.nodes)) n.reason = "not asked: etcd could not be written";
        this.#finish(session, "failed", reason);
      }
      return false;
    }
  }

  /** Marks the session's state in etcd; a failed write is an event, not a failed session (its parts run). */
  async #setStored(session: ClusterSession, state: string): Promise<void> {
    if (!this.o.store) return;
    try {
      await this.o.store.setState(session.name, { state, node: this.o.self, attempt: session.attempt });
    } catch (error) {
      this.#event(session, `etcd state "${state}" not written: ${errorMessage(error)}`);
    }
  }

  /** Removes the session from etcd (stopped, or its start failed). */
  async #unstore(session: ClusterSession): Promise<void> {
    if (!this.o.store) return;
    try {
      await this.o.store.removeSession(session.name);
      session.stored = false;
    } catch (error) {
      this.#event(session, `not removed from etcd: ${errorMessage(error)}`);
    }
  }

  /** Aborts or stops every part of the session's attempt (any attempt when absent), recording what each did. */
  async #undo(session: ClusterSession, attempt: string | undefined): Promise<void> {
    const t = this.o.stepTimeoutMs;
    await Promise.all(
      Object.entries(session.nodes).map(async ([node, outcome]) => {
        const member = this.#members.get(node);
        if (!member || (this.#lost.has(node) && !this.o.member?.(node))) {
          outcome.undone = member ? "not asked: node lost" : "not asked: not a member";
          if (member) this.#remember(node, session.name, session.attempt);
          return;
        }
        try {
          const r: UndoResult = await withTimeout(
            this.o.clock,
            t,
            member.abort(session.name, attempt, t),
            `abort on ${node}`,
          );
          outcome.undone = r;
          if (r === "stopped" && outcome.state === "committed") outcome.state = "stopped";
        } catch (error) {
          // Its reservation runs out on its own; a running part is stopped when the node is heard from again.
          outcome.undone = `could not undo: ${failure(error).reason}`;
          this.#remember(node, session.name, session.attempt);
        }
      }),
    );
  }

  /** Stops every part of a session coordinated here; null when there is none. Throws SessionBusy mid-start. */
  async stop(name: string): Promise<Outcome | null> {
    const session = this.#sessions.get(name);
    if (!session) return null;
    if (session.state === "stopped" || session.state === "failed") return this.outcome(session);
    if (session.state === "starting" || session.state === "restarting") {
      throw new SessionBusy(name, session.state);
    }
    session.state = "stopping";
    await this.#undo(session, undefined);
    await this.#unstore(session);
    this.#finish(session, "stopped", "stopped on request");
    return this.outcome(session);
  }

  /** A member stopped answering heartbeats: its sessions are stopped or started again without it. */
  async nodeLost(node: string): Promise<void> {
    if (this.#lost.has(node)) return;
    this.#lost.add(node);
    this.o.logger.warn("cluster node lost", { node });
    // A part waiting for its node's restart (kept in etcd after a takeover) is not lost again.
    const hit = [...this.#sessions.values()].filter((s) =>
      s.state === "running" && s.nodes[node] && s.nodes[node].reason !== WAITING
    );
    await Promise.all(hit.map((s) => this.#recover(s, node)));
  }

  /** A lost member is heard from again: parts it may still run of sessions that moved on are stopped there. */
  async nodeBack(node: string): Promise<void> {
    if (!this.#lost.delete(node)) return;
    this.o.logger.info("cluster node back", { node });
    for (const s of this.#sessions.values()) {
      const outcome = s.nodes[node];
      if (s.state !== "running" || outcome?.reason !== WAITING) continue;
      // It restores its part from etcd on its own as it starts.
      Object.assign(outcome, { state: "committed", reason: "back: its part restored from etcd" });
      this.#event(s, `node ${node} back; it restores its part from etcd`);
    }
    const stale = this.#stale.get(node);
    this.#stale.delete(node);
    this.#staleRetry.delete(node);
    const member = this.#members.get(node);
    if (!stale || !member) return;
    await Promise.all([...stale].map(async ([session, attempt]) => {
      const current = this.#sessions.get(session);
      if (current && current.attempt === attempt && current.state === "running") return;
      try {
        await withTimeout(
          this.o.clock,
          this.o.stepTimeoutMs,
          member.abort(session, attempt, 0),
          `abort on ${node}`,
        );
        if (current) this.#event(current, `stale part of attempt ${attempt} stopped on ${node}, back again`);
      } catch {
        this.#remember(node, session, attempt);
      }
    }));
  }

  /**
   * A member not declared lost answered (a heartbeat): parts it may still run of attempts whose undo failed (a
   * commit that went through with its answer lost, then a failed abort) are aborted again, at most every
   * STALE_RETRY_MS doubling up to STALE_RETRY_MAX_MS. An entry goes once the node answers the abort (undone, or
   * nothing of that attempt runs there).
   */
  async retryStale(node: string): Promise<void> {
    const stale = this.#stale.get(node);
    const member = this.#members.get(node);
    if (!stale || !member || this.#lost.has(node) || this.#retrying.has(node)) return;
    const retry = this.#staleRetry.get(node) ?? { tries: 0, next: 0 };
    this.#staleRetry.set(node, retry);
    if (this.o.clock.now() < retry.next) return;
    this.#retrying.add(node);
    let failed = false;
    try {
      await Promise.all([...stale].map(async ([session, attempt]) => {
        const current = this.#sessions.get(session);
        if (current && current.attempt === attempt && current.state === "running") {
          // That attempt is the session's live one again: its part belongs there.
          stale.delete(session);
          return;
        }
        try {
          const r = await withTimeout(
            this.o.clock,
            this.o.stepTimeoutMs,
            member.abort(session, attempt, this.o.stepTimeoutMs),
            `abort on ${node}`,
          );
          if (stale.get(session) === attempt) stale.delete(session);
          if (current) this.#event(current, `stale part of attempt ${attempt} on ${node}: ${r} (retried)`);
        } catch {
          failed = true;
        }
      }));
    } finally {
      this.#retrying.delete(node);
    }
    if (stale.size === 0) {
      this.#stale.delete(node);
      this.#staleRetry.delete(node);
      return;
    }
    if (failed) {
      retry.tries++;
      retry.next = this.o.clock.now() +
        Math.min(STALE_RETRY_MAX_MS, STALE_RETRY_MS * 2 ** Math.min(retry.tries, 16));
    }
  }

  async #recover(session: ClusterSession, node: string): Promise<void> {
    if (this.o.store) {
      // Another control unit may coordinate it now, or have stopped it: only the one etcd names acts.
      let stored;
      try {
        stored = await this.o.store.session(session.name);
      } catch (error) {
        this.#event(
          session,
          `node ${node} lost; etcd not readable, acting on it anyway: ${errorMessage(error)}`,
        );
        stored = { state: { node: this.o.self } };
      }
      if (!stored) return this.release(session.name, "removed from etcd by another control unit");
      if (stored.state && stored.state.node !== this.o.self) {
        return this.release(session.name, `coordinated by ${stored.state.node} now`, {
          to: stored.state.node,
        });
      }
    }
    session.nodes[node].state = "lost";
    this.#remember(node, session.name, session.attempt);
    this.#event(session, `node ${node} lost; on_node_loss = ${session.onNodeLoss}`);
    if (session.onNodeLoss === "stop") {
      session.state = "stopping";
      await this.#undo(session, undefined);
      await this.#unstore(session);
      this.#finish(session, "stopped", `node ${node} lost: the session was stopped on every node`);
      return;
    }
    session.state = "restarting";
    await this.#undo(session, undefined);
    session.attempt = attemptId();
    await this.#run(session, this.#spec(session.text, session), "update");
    // #run changed the state meanwhile.
    if ((session.state as SessionState) === "running") {
      session.reason = `node ${node} lost: restarted without it`;
      this.#event(session, session.reason);
    } else {
      // Nothing of it runs anywhere (the failed attempt undid its parts): the session is stopped, saying why.
      await this.#unstore(session);
      session.state = "stopped";
      delete session.upload;
      session.reason = `node ${node} lost; a restart without it failed: ${session.reason}`;
      this.#event(session, session.reason);
    }
  }

  /** Nodes holding parts of running sessions coordinated here: watched by heartbeats. */
  partNodes(): Set<string> {
    const out = new Set<string>();
    for (const s of this.#sessions.values()) {
      if (s.state !== "running" && s.state !== "starting" && s.state !== "restarting") continue;
      for (const n of Object.keys(s.nodes)) if (n !== this.o.self) out.add(n);
    }
    for (const n of this.#stale.keys()) out.add(n);
    return out;
  }

  get(name: string): ClusterSession | undefined {
    return this.#sessions.get(name);
  }

  outcome(s: ClusterSession): Outcome {
    return {
      session: s.name,
      state: s.state,
      ...(s.reason ? { reason: s.reason } : {}),
      attempt: s.attempt,
      on_node_loss: s.onNodeLoss,
      placement: s.placement,
      nodes: structuredClone(s.nodes),
      events: [...s.events],
    };
  }

  status(): Record<string, unknown> {
    return {
      lost: [...this.#lost],
      stale_parts: Object.fromEntries(
        [...this.#stale].map(([node, m]) => {
          const r = this.#staleRetry.get(node);
          return [node, {
            sessions: Object.fromEntries(m),
            abort_retries: r?.tries ?? 0,
            ...(r && r.next > 0 ? { next_retry_at: new Date(r.next).toISOString() } : {}),
          }];
        }),
      ),
      sessions: Object.fromEntries([...this.#sessions.values()].map((s) => [s.name, this.outcome(s)])),
    };
  }

  #finish(session: ClusterSession, state: "failed" | "stopped", reason: string): void {
    session.state = state;
    session.reason = reason;
    delete session.upload;
    this.#event(session, reason);
    this.o.logger.warn(
      state === "failed" ? "session start across nodes failed" : "session stopped across nodes",
      {
        session: session.name,
        reason,
      },
    );
    const finished = [...this.#sessions.values()].filter((s) =>
      s.state === "failed" || s.state === "stopped"
    );
    for (const s of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED))) {
      this.#sessions.delete(s.name);
    }
  }

  #forgetFinished(name: string): void {
    const s = this.#sessions.get(name);
    if (s && (s.state === "failed" || s.state === "stopped")) this.#sessions.delete(name);
  }

  #remember(node: string, session: string, attempt: string): void {
    let m = this.#stale.get(node);
    if (!m) this.#stale.set(node, m = new Map());
    m.set(session, attempt);
    if (!this.#staleRetry.has(node)) {
      this.#staleRetry.set(node, { tries: 0, next: this.o.clock.now() + STALE_RETRY_MS });
    }
  }

  #event(session: ClusterSession, text: string): void {
    session.events.push({ at: new Date(this.o.clock.now()).toISOString(), text });
    if (session.events.length > MAX_EVENTS) session.events.splice(0, session.events.length - MAX_EVENTS);
  }
}
