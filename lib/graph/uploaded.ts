/**
 * Uploaded active programs (issue 19) as AP kinds of the one session they came with: `ref=upload.NAME` names the
 * module NAME.ts (or .js, .mjs, .mts) of the session's upload. Before the program is checked, the modules the
 * program names are loaded once in a sandbox child (SandboxHost.inspect): a syntax error stops there with its
 * uploaded file, line and column, and each module's declared `ports` and `params` become a kind with real port
 * names and parameter parsers, so the graph check reports a wrong port or parameter at its place in the program.
 *
 * At run time the uploaded APs of one `{ VM ... }` group share one sandbox process (a SandboxPool entry per group);
 * an uploaded AP outside any group has a process of its own. The built-in APs of a group keep running in the group's
 * worker (vm/group.ts); an uploaded AP's proxy element sits in the main isolate, where every wire of the session can
 * reach it, and passes its batches to the process. A program's inputs and outputs are matched to the module's
 * `ports` by name. With use_RTP, RTCP datagrams do not reach the program: they leave by every output unchanged.
 */
import { type Clock, systemClock } from "../core/clock.ts";
import { StartError } from "../core/errors.ts";
import type { CounterSet, MetricsRegistry } from "../core/metrics.ts";
import type { Batch } from "../net/udp.ts";
import {
  DROP_REASONS,
  type ParamDecl,
  type PortsDecl,
  type ProgramInfo,
  SandboxHost,
  type SandboxLimits,
} from "../sandbox/mod.ts";
import type { Element, ElementKind, HardStop, Output } from "./element.ts";
import { boolParam, numberParam, type Param, type Params, stringParam } from "./params.ts";

/** A name as one plain path component (session and group names in storage paths). */
const pathPart = (name: string): string => name.replace(/[^A-Za-z0-9_.-]/g, "_");

/** The ref prefix of an uploaded program's kind. */
export const UPLOAD_PREFIX = "upload.";
const EXTENSIONS = [".ts", ".js", ".mjs", ".mts"];

/** The module a ref `upload.NAME` names in `modules`, or null. */
export function entryOf(ref: string, modules: Readonly<Record<string, string>>): string | null {
  if (!ref.startsWith(UPLOAD_PREFIX)) return null;
  const base = ref.slice(UPLOAD_PREFIX.length);
  for (const ext of EXTENSIONS) if (Object.hasOwn(modules, base + ext)) return base + ext;
  return null;
}

/** A program's declared parameter as a parser for the program language (required when it has no default). */
export function paramOf(decl: ParamDecl): Param<unknown> {
  const doc = decl.doc ?? "";
  if (decl.type === "number") {
    return numberParam(doc, { min: decl.min, max: decl.max, default: decl.default as number | undefined });
  }
  if (decl.type === "boolean") {
    return { ...boolParam(doc, false), default: decl.default as boolean | undefined };
  }
  return stringParam(doc, decl.default as string | undefined);
}

/** One uploaded AP as its group's process runs it. */
interface Member {
  readonly ap: string;
  readonly entry: string;
  readonly files: "read" | "write" | null;
  /** The module's ports as the check saw them. */
  readonly ports: PortsDecl;
  readonly params: Readonly<Record<string, unknown>>;
  /** Program input -> module input index. */
  readonly inputs: readonly number[];
  /** Module output index -> the element's output, or null (the program does not wire it). */
  readonly outputs: readonly (Output | null)[];
  readonly all: readonly Output[];
  released: boolean;
}

interface Group {
  readonly name: string;
  readonly members: Member[];
  host: SandboxHost | null;
  started: Promise<void> | null;
  sets: CounterSet[];
}

export interface SandboxPoolOptions {
  readonly session: string;
  readonly modules: Readonly<Record<string, string>>;
  readonly limits?: Partial<SandboxLimits>;
  /** The deno executable the children run (default: this one). */
  readonly deno?: string;
  readonly tempDir?: string;
  readonly metrics?: MetricsRegistry;
  /** Real time by default: deadlines and backoff are the child's, not a test's. */
  readonly clock?: Clock;
  /**
   * Where programs that declare `needs.files` keep files: `DIR/uploads/SESSION/GROUP` (the node's data directory),
   * at most `storageBytes` per group; 0 or absent: such programs are refused.
   */
  readonly dataDir?: string;
  readonly storageBytes?: number;
}

/** The sandbox processes of one session, one per VM group that holds uploaded APs (or per ungrouped uploaded AP). */
export class SandboxPool implements HardStop {
  readonly #o: SandboxPoolOptions;
  readonly #groups = new Map<string, Group>();
  /** This session's own storage root (a new one each time it starts: nothing of an earlier run is seen). */
  readonly #storageRoot: string | null;
  #closed = false;

  constructor(options: SandboxPoolOptions) {
    this.#o = options;
    this.#storageRoot = options.dataDir
      ? `${options.dataDir}/uploads/${pathPart(options.session)}-${crypto.randomUUID().slice(0, 8)}`
      : null;
  }

  /** The kinds of the uploaded modules named by `refs`, from what their sandbox reported (see the module doc). */
  kinds(programs: ReadonlyMap<string, { entry: string; info: ProgramInfo }>): ElementKind[] {
    return [...programs].map(([ref, { entry, info }]) => this.#kind(ref, entry, info));
  }

  /** Sandbox processes the session will run: its VM groups with uploaded APs, and its ungrouped uploaded APs. */
  static processes(
    aps: readonly { readonly ref: string; readonly vm: string | null; readonly name: string }[],
  ) {
    return new Set(aps.filter((a) => a.ref.startsWith(UPLOAD_PREFIX)).map((a) => a.vm ?? `ap:${a.name}`))
      .size;
  }

  /** Figures of every group's process, for the session's status. */
  status(): Record<string, unknown>[] {
    return [...this.#groups.values()].map((g) => ({
      group: g.name,
      aps: g.members.map((m) => m.ap),
      ...(g.host?.status() ?? { state: "idle" }),
    }));
  }

  /** The status of the process that runs `group`, or null. */
  groupStatus(group: string): Record<string, unknown> | null {
    return this.#groups.get(group)?.host?.status() ?? null;
  }

  /** Kills every process at once without waiting (the node's stop passed its deadline; see HardStop). */
  hardStop(): void {
    this.#closed = true;
    for (const g of this.#groups.values()) g.host?.abandon();
  }

  /** Stops every process (also those a failed start left); idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#groups.values()].map((g) => this.#stopGroup(g)));
    // Storage lives as long as the session: bounded by what is running, never by what ran.
    if (this.#storageRoot) await Deno.remove(this.#storageRoot, { recursive: true }).catch(() => {});
  }

  #kind(ref: string, entry: string, info: ProgramInfo): ElementKind {
    const params: Params = Object.fromEntries(Object.entries(info.params).map(([k, d]) => [k, paramOf(d)]));
    const { inputs, outputs } = info.ports;
    return {
      name: ref,
      description: `Uploaded program ${entry}: inputs ${inputs.join(", ")}; outputs ${
        outputs.join(", ") || "none"
      }`,
      ports: {
        inputs: { min: 1, max: inputs.length },
        outputs: { min: 0, max: outputs.length },
        fanout: true,
      },
      params,
      sandboxed: true,
      check: (_values, place) => {
        const problems: string[] = [];
        if (info.needs.files && !(this.#o.dataDir && this.#o.storageBytes)) {
          problems.push(
            `it declares needs.files = "${info.needs.files}" and this node gives uploads no storage (node.uploads.storage_bytes is 0)`,
          );
        }
        for (const name of place.inputNames ?? []) {
          if (!inputs.includes(name)) {
            problems.push(`it has no input "${name}" (its inputs: ${inputs.join(", ")})`);
          }
        }
        for (const name of place.outputNames ?? []) {
          if (!outputs.includes(name)) {
            problems.push(`it has no output "${name}" (its outputs: ${outputs.join(", ") || "none"})`);
          }
        }
        return problems;
      },
      create: (ctx) => {
        const group = this.#group(ctx.vm ?? `ap:${ctx.name}`);
        const outputNames = ctx.outputNames ?? [];
        const member: Member = {
          ap: ctx.name,
          entry,
          files: info.needs.files ?? null,
          ports: info.ports,
          params: { ...ctx.params },
          inputs: ctx.inputs.map((name) => inputs.indexOf(name)),
          outputs: outputs.map((name) => {
            const j = outputNames.indexOf(name);
            return j < 0 ? null : ctx.outputs[j];
          }),
          all: ctx.outputs,
          released: false,
        };
        const program = group.members.push(member) - 1;
        return this.#element(group, member, program);
      },
    };
  }

  #group(name: string): Group {
    let g = this.#groups.get(name);
    if (!g) this.#groups.set(name, g = { name, members: [], host: null, started: null, sets: [] });
    return g;
  }

  #element(group: Group, member: Member, program: number): Element {
    return {
      push: (input, batch: Batch, rtcp) => {
        if (rtcp) {
          for (const out of member.all) out.emit(batch, true);
          return;
        }
        group.host?.push(member.inputs[input], batch, program);
      },
      start: () => this.#start(group),
      stop: async () => {
        member.released = true;
        if (group.members.every((m) => m.released)) await this.#stopGroup(group);
      },
      status: () => {
        const s = group.host?.status() ?? { state: "idle" };
        return { sandbox: { group: group.name, program: program, entry: member.entry, ...s } };
      },
    };
  }

  /** Starts the group's process once, with every member created so far (the executor creates all before starting). */
  #start(group: Group): Promise<void> {
    if (group.started) return group.started;
    if (this.#closed) return Promise.reject(new StartError("the session is stopping"));
    const host = new SandboxHost({
      name: `${this.#o.session}/${group.name}`,
      modules: this.#o.modules,
      programs: group.members.map((m) => ({ name: m.ap, entry: m.entry, params: m.params, ports: m.ports })),
      limits: this.#o.limits,
      deno: this.#o.deno,
      tempDir: this.#o.tempDir,
      clock: this.#o.clock ?? systemClock,
      storage: this.#storage(group),
      onOutput: (output, batch, program) => group.members[program]?.outputs[output]?.emit(batch, false),
    });
    group.host = host;
    group.started = host.start().then(() => this.#publish(group), (error) => {
      throw new StartError(`its sandbox (${group.name}) did not start: ${(error as Error).message}`);
    });
    return group.started;
  }

  /** The group's storage when one of its programs declared files (checked to be allowed when the plan was made). */
  #storage(group: Group): { dir: string; write: boolean; bytes: number } | undefined {
    const files = group.members.map((m) => m.files);
    if (!files.some((f) => f) || !this.#storageRoot || !this.#o.storageBytes) return undefined;
    return {
      dir: `${this.#storageRoot}/${pathPart(group.name)}`,
      write: files.includes("write"),
      bytes: this.#o.storageBytes,
    };
  }

  #publish(group: Group): void {
    const metrics = this.#o.metrics;
    const host = group.host;
    if (!metrics || !host) return;
    const labels = { session: this.#o.session, group: group.name };
    const set = metrics.set("session_sandbox", labels);
    const figure = (key: string) => () => Number(host.status()[key] ?? 0);
    set.gauge("up", "1 while the sandbox process runs its programs", () => host.state === "running" ? 1 : 0);
    set.gauge("memory_bytes", "Resident memory of the sandbox process (last sample)", figure("memory_bytes"));
    set.gauge(
      "cpu_seconds",
      "CPU time of the sandbox process (last sample)",
      () => Number(host.status().cpu_ms ?? 0) / 1000,
    );
    set.gauge("queue_depth", "Batches in the sandbox or on their way to it", figure("queue_depth"));
    set.gauge("queue_bytes", "Bytes of batches in the sandbox or on their way to it", figure("queue_bytes"));
    set.counter("restarts_total", "Restarts of the sandbox process", figure("restarts"));
    set.counter("batches_total", "Batches handed to the sandbox", figure("batches_in"));
    set.counter(
      "batches_shared_total",
      "Batches that crossed to the sandbox in the memory it shares with the node",
      figure("batches_shared"),
    );
    set.counter("packets_in_total", "Datagrams handed to the sandbox", figure("packets_in"));
    set.counter("packets_out_total", "Datagrams the sandbox's programs emitted", figure("packets_out"));
    set.counter("denials_total", "Accesses the sandbox's programs were denied", figure("denials"));
    group.sets.push(set);
    for (const reason of DROP_REASONS) {
      const dropped = metrics.set("session_sandbox", { ...labels, reason });
      dropped.counter(
        "dropped_total",
        "Datagrams the sandbox lost, by reason",
        () => (host.status().dropped as Record<string, number>)[reason] ?? 0,
      );
      group.sets.push(dropped);
    }
  }

  async #stopGroup(group: Group): Promise<void> {
    for (const set of group.sets) this.#o.metrics?.remove(set);
    group.sets = [];
    await group.host?.stop();
  }
}
