/**
 * The participant's side of a start across nodes: this node's parts of sessions other nodes (or this one)
 * coordinate. A part is prepared (checked and reserved in the session table, nothing started), then committed
 * (started) or aborted (released). Each start attempt has an id: an abort is remembered for that attempt, so a
 * prepare that arrives after its abort (a slow network) is refused instead of holding ports until its reservation
 * expires, and a commit only starts the attempt it names.
 */
import { ErrorList, StartError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { MAX_PROGRAM_BYTES } from "../dipronn/parser.ts";
import { PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";
import { errorsJson, SessionConflict, type SessionTable, type UploadedKind } from "../node/sessions.ts";
import { needsProblems, paramsProblems, portsProblems } from "../sandbox/contract.ts";
import { UPLOAD_PREFIX } from "../graph/uploaded.ts";
import { NODE_NAME } from "./config.ts";

/** What a coordinator sends a node with its part. */
export interface PartRequest {
  /** The whole program: every node checks the wiring of all of it and plans only its own APs. */
  readonly text: string;
  readonly file: string;
  readonly format: ProgramFormat;
  /** AP name -> node name, for every AP of the session. */
  readonly nodeOf: Readonly<Record<string, string>>;
  readonly coordinator: string;
  readonly attempt: string;
  /**
   * The session's uploaded modules (file name -> source), sent only to a node that runs an uploaded AP: all of
   * them, since a module may import the others. The node loads them in its own sandbox under its own node.uploads.
   */
  readonly modules?: Readonly<Record<string, string>>;
  /** Every uploaded kind of the session by ref (its module and declared ports, params and needs): for the check. */
  readonly kinds?: Readonly<Record<string, UploadedKind>>;
}

/** A node would not take its part; `reason` says why (and `errors` the program's mistakes, if that was it). */
export class PartRefused extends Error {
  override name = "PartRefused";
  constructor(readonly node: string, readonly reason: string, readonly errors?: unknown) {
    super(`Node ${node} refused its part: ${reason}`);
  }
}

const ATTEMPT = /^[0-9a-f]{8,64}$/;
const MAX_APS_IN_REQUEST = 1024;
/** The most node.uploads could ever allow (its max_modules and max_bytes); each node's own limits apply after. */
const MAX_MODULES_IN_REQUEST = 1000;
const MAX_MODULE_BYTES_IN_REQUEST = 64 * 1024 * 1024;
/** Aborted attempts remembered; the oldest go first. */
const MAX_TOMBSTONES = 1024;

/** Checks a part request from the wire; a message when it is not one. */
export function parsePartRequest(value: unknown): PartRequest | string {
  if (typeof value !== "object" || value === null) return "the body is not a JSON object";
  const v = value as Record<string, unknown>;
  if (typeof v.text !== "string" || new TextEncoder().encode(v.text).length > MAX_PROGRAM_BYTES) {
    return `text must be the program, at most ${MAX_PROGRAM_BYTES} bytes`;
  }
  if (typeof v.file !== "string" || v.file.length > 4096) return "file must be a name";
  if (typeof v.format !== "string" || !(PROGRAM_FORMATS as readonly string[]).includes(v.format)) {
    return `format must be one of ${PROGRAM_FORMATS.join(", ")}`;
  }
  if (typeof v.coordinator !== "string" || !NODE_NAME.test(v.coordinator)) {
    return "coordinator must be a node name";
  }
  if (typeof v.attempt !== "string" || !ATTEMPT.test(v.attempt)) return "attempt must be 8..64 hex digits";
  const nodeOf = v.nodeOf;
  if (typeof nodeOf !== "object" || nodeOf === null || Array.isArray(nodeOf)) {
    return "nodeOf must be a mapping";
  }
  const entries = Object.entries(nodeOf);
  if (entries.length > MAX_APS_IN_REQUEST) return `nodeOf holds more than ${MAX_APS_IN_REQUEST} APs`;
  for (const [, node] of entries) {
    if (typeof node !== "string" || !NODE_NAME.test(node)) return "nodeOf must map AP names to node names";
  }
  const modules = parseModules(v.modules);
  if (typeof modules === "string") return modules;
  const kinds = parseKinds(v.kinds);
  if (typeof kinds === "string") return kinds;
  return {
    text: v.text,
    file: v.file,
    format: v.format as ProgramFormat,
    nodeOf: Object.fromEntries(entries) as Record<string, string>,
    coordinator: v.coordinator,
    attempt: v.attempt,
    ...(modules ? { modules } : {}),
    ...(kinds ? { kinds } : {}),
  };
}

function parseModules(value: unknown): Record<string, string> | undefined | string {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "modules must be a mapping";
  const entries = Object.entries(value);
  if (entries.length > MAX_MODULES_IN_REQUEST) {
    return `modules holds more than ${MAX_MODULES_IN_REQUEST} modules`;
  }
  let bytes = 0;
  for (const [name, source] of entries) {
    if (typeof source !== "string" || name.length > 100) return "modules must map file names to source text";
    bytes += source.length;
  }
  if (bytes > MAX_MODULE_BYTES_IN_REQUEST) {
    return `modules holds more than ${MAX_MODULE_BYTES_IN_REQUEST} bytes`;
  }
  return Object.fromEntries(entries) as Record<string, string>;
}

function parseKinds(value: unknown): Record<string, UploadedKind> | undefined | string {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "kinds must be a mapping";
  const entries = Object.entries(value);
  if (entries.length > MAX_APS_IN_REQUEST) return `kinds holds more than ${MAX_APS_IN_REQUEST} kinds`;
  for (const [ref, kind] of entries) {
    // Only uploaded kinds travel: a declared `localservice.*` would stand in for the node's own element.
    if (!ref.startsWith(UPLOAD_PREFIX)) {
      return `kinds.${ref.slice(0, 60)}: only uploaded kinds (${UPLOAD_PREFIX}NAME)`;
    }
    const k = kind as
      | { entry?: unknown; info?: { needs?: unknown; ports?: unknown; params?: unknown } }
      | null;
    const problems = !k || typeof k.entry !== "string" || !k.info || typeof k.info !== "object"
      ? ["it must be {entry, info}"]
      : [...needsProblems(k.info.needs), ...portsProblems(k.info.ports), ...paramsProblems(k.info.params)];
    if (problems.length) return `kinds.${ref.slice(0, 60)}: ${problems.join("; ")}`;
  }
  return Object.fromEntries(entries) as Record<string, UploadedKind>;
}

interface Part {
  /** Changes when another member takes the session's coordination over (etcd). */
  coordinator: string;
  readonly attempt: string;
  /** "committing" while its start runs (a part with uploaded APs starts sandboxes then, which takes a while). */
  state: "prepared" | "committing" | "running";
  /** The start under way, which a repeated commit joins. */
  committing?: Promise<void>;
  readonly aps: readonly string[];
}

/** A part stopped because its coordinator was lost (shown in /status). */
export interface OrphanedPart {
  readonly session: string;
  readonly attempt: string;
  readonly coordinator: string;
  readonly undone: "released" | "stopped" | "none";
  readonly reason: string;
}

const MAX_ORPHANED = 64;

export class PartHost {
  readonly #parts = new Map<string, Part>();
  readonly #orphaned: OrphanedPart[] = [];
  readonly #tombstones = new Set<string>();

  constructor(
    readonly self: string,
    private readonly table: SessionTable,
    private readonly logger: Logger,
  ) {}

  /** Checks and reserves this node's part; throws PartRefused. */
  async prepare(session: string, req: PartRequest): Promise<{ aps: string[]; ports: readonly number[] }> {
    if (this.#tombstones.has(req.attempt)) {
      throw new PartRefused(
        this.self,
        `start attempt ${req.attempt} of session ${session} was aborted already`,
      );
    }
    const mine = Object.entries(req.nodeOf).filter(([, n]) => n === this.self).map(([ap]) => ap);
    if (mine.length === 0) {
      throw new PartRefused(this.self, `no AP of session ${session} is placed on ${this.self}`);
    }
    try {
      const plan = await this.table.prepare(session, req.text, {
        file: req.file,
        format: req.format,
        placement: { self: this.self, nodeOf: req.nodeOf },
        ...(req.modules ? { modules: req.modules } : {}),
        ...(req.kinds ? { remoteKinds: req.kinds } : {}),
      });
      if (this.#tombstones.has(req.attempt)) {
        // Its abort came while the check ran: nothing may stay reserved for it.
        await this.table.abort(session);
        throw new PartRefused(
          this.self,
          `start attempt ${req.attempt} of session ${session} was aborted meanwhile`,
        );
      }
      this.#parts.set(session, {
        coordinator: req.coordinator,
        attempt: req.attempt,
        state: "prepared",
        aps: mine,
      });
      return { aps: plan.aps.map((a) => a.name), ports: plan.ports };
    } catch (error) {
      throw refusal(this.self, error);
    }
  }

  /** Starts the prepared part of `attempt`; throws PartRefused. */
  commit(session: string, attempt: string): Promise<void> {
    const part = this.#parts.get(session);
    if (!part || part.attempt !== attempt) {
      return Promise.reject(
        new PartRefused(this.self, `no prepared part of session ${session} for start attempt ${attempt}`),
      );
    }
    if (part.state === "running") return Promise.resolve();
    if (part.committing) return part.committing;
    part.state = "committing";
    part.committing = this.#commit(session, attempt, part);
    return part.committing;
  }

  async #commit(session: string, attempt: string, part: Part): Promise<void> {
    try {
      await this.table.commit(session);
      if (this.#parts.get(session) !== part) {
        // Aborted while it started (the coordinator gave up waiting): what started must not stay.
        await this.table.remove(session);
        throw new PartRefused(
          this.self,
          `start attempt ${attempt} of session ${session} was aborted meanwhile`,
        );
      }
      part.state = "running";
    } catch (error) {
      // The table gave the reservation up when the start began: nothing of this attempt is held there now, and a
      // reservation under this name is the next attempt's (prepared while this one stopped), which must stay.
      if (this.#parts.get(session) === part) this.#parts.delete(session);
      throw refusal(this.self, error);
    }
  }

  /**
   * Undoes `attempt` (any attempt when absent): releases a prepared part or stops a running one. Remembers the
   * attempt, so that its prepare, should it still arrive, is refused.
   */
  async abort(session: string, attempt?: string): Promise<"released" | "stopped" | "none"> {
    if (attempt !== undefined) this.#bury(attempt);
    const part = this.#parts.get(session);
    if (!part || (attempt !== undefined && part.attempt !== attempt)) return "none";
    this.#parts.delete(session);
    if (part.state === "committing") {
      // Its start is under way: once it returns, the commit finds the part gone and stops what started. Only then
      // is nothing of it left, and a new attempt may be prepared.
      await part.committing?.catch(() => {});
      this.logger.info("session part stopped", { session, attempt: part.attempt });
      return "stopped";
    }
    if (part.state === "prepared") {
      await this.table.abort(session);
      this.logger.info("session part aborted", { session, attempt: part.attempt });
      return "released";
    }
    await this.table.remove(session);
    this.logger.info("session part stopped", { session, attempt: part.attempt });
    return "stopped";
  }

  /**
   * Starts this node's part again from what etcd holds (a restarted node): prepare and commit here at once, under
   * the stored attempt and coordinator. Resolves to false when the part runs here already; throws PartRefused.
   */
  async restore(session: string, req: PartRequest): Promise<boolean> {
    this.#prune();
    if (this.#parts.has(session) || this.table.get(session)) return false;
    await this.prepare(session, req);
    await this.commit(session, req.attempt);
    return true;
  }

  /** Whether a part of `session` is prepared or running here. */
  has(session: string): boolean {
    this.#prune();
    return this.#parts.has(session);
  }

  /** Another member coordinates `session` now (a takeover seen in etcd): heartbeats go to it. */
  setCoordinator(session: string, coordinator: string): void {
    const part = this.#parts.get(session);
    if (part) part.coordinator = coordinator;
  }

  /** Stops this node's part of `session`, whatever attempt started it. */
  stop(session: string): Promise<"released" | "stopped" | "none"> {
    return this.abort(session);
  }

  /** The nodes coordinating the parts held here: they are watched for loss. */
  coordinators(): Set<string> {
    this.#prune();
    const out = new Set<string>();
    for (const p of this.#parts.values()) if (p.coordinator !== this.self) out.add(p.coordinator);
    return out;
  }

  /** Sessions held here for `coordinator`. */
  sessionsOf(coordinator: string): string[] {
    this.#prune();
    return [...this.#parts].filter(([, p]) => p.coordinator === coordinator).map(([s]) => s);
  }

  /**
   * Stops every part held here for `coordinator`, which was declared lost while no etcd can hand its sessions to
   * another member: nobody is left to stop or restart them, so they would run forever and hold their names.
   */
  async coordinatorLost(coordinator: string, reason: string): Promise<string[]> {
    const sessions = this.sessionsOf(coordinator);
    for (const session of sessions) {
      const part = this.#parts.get(session);
      if (!part) continue;
      const undone = await this.abort(session);
      this.#orphaned.push({ session, attempt: part.attempt, coordinator, undone, reason });
      if (this.#orphaned.length > MAX_ORPHANED) {
        this.#orphaned.splice(0, this.#orphaned.length - MAX_ORPHANED);
      }
      this.logger.warn("session part stopped: its coordinator is lost", { session, coordinator, undone });
    }
    return sessions;
  }

  status(): Record<string, unknown> {
    this.#prune();
    return Object.fromEntries(
      [...this.#parts].map(([s, p]) => {
        // A part with uploaded APs shows its sandboxes' figures as a session on one node does.
        const sandboxes = p.state === "running"
          ? (this.table.get(s)?.status() as { sandboxes?: unknown } | undefined)?.sandboxes
          : undefined;
        return [s, {
          coordinator: p.coordinator,
          attempt: p.attempt,
          state: p.state,
          aps: p.aps,
          ...(sandboxes ? { sandboxes } : {}),
        }];
      }),
    );
  }

  /** Parts stopped because their coordinator was lost (newest last, at most MAX_ORPHANED). */
  orphaned(): readonly OrphanedPart[] {
    return [...this.#orphaned];
  }

  /** Forgets parts the table no longer holds: a reservation that expired without a commit, a removed session. */
  #prune(): void {
    const prepared = new Set(this.table.prepared().map((p) => p.session));
    for (const [session, part] of this.#parts) {
      if (part.state === "prepared" && !prepared.has(session)) this.#parts.delete(session);
      else if (part.state === "running" && !this.table.get(session)) this.#parts.delete(session);
    }
  }

  #bury(attempt: string): void {
    this.#tombstones.add(attempt);
    if (this.#tombstones.size > MAX_TOMBSTONES) {
      this.#tombstones.delete(this.#tombstones.values().next().value!);
    }
  }
}

function refusal(node: string, error: unknown): PartRefused {
  if (error instanceof PartRefused) return error;
  if (error instanceof ErrorList) {
    return new PartRefused(node, `the program has errors:\n${error.format()}`, errorsJson(error));
  }
  if (error instanceof SessionConflict || error instanceof StartError) {
    return new PartRefused(node, error.message);
  }
  return new PartRefused(node, String(error instanceof Error ? error.message : error));
}
