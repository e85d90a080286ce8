/**
 * The node role: runs DiProNN sessions (graphs of active programs). Sessions come from program files named in the
 * config, started at boot, and from the session API (upload and start, list, stop; mutations behind the token).
 * A reload starts, stops and replaces boot sessions by file (prepareNodeReload); API sessions are left alone.
 */
import type { Hono } from "hono";
import type { YAMLMap } from "yaml";
import { ErrorList, errorMessage, StartError, startErrorAt, UsageError } from "../core/errors.ts";
import { readTextFileLimited } from "../core/files.ts";
import { MAX_PROGRAM_BYTES } from "../dipronn/parser.ts";
import { type Context, int, list, nodeAt, type ObjectOf, opt, section, str } from "../config/schema.ts";
import type { Registry } from "../core/registry.ts";
import { type ElementKind, hardStopShared } from "../graph/element.ts";
import { coreElements } from "../graph/elements/mod.ts";
import { formatOf, PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";
import { isIP } from "../net/address.ts";
import { udpFields, udpOptions } from "../net/udp_fields.ts";
import type { ReloadSummary, RoleDef } from "../roles/role.ts";
import type { RunningSession } from "../graph/executor.ts";
import {
  errorsJson,
  SessionConflict,
  sessionFields,
  sessionOptions,
  type SessionReload,
  SessionTable,
} from "./sessions.ts";
import { readUpload, uploadOptions, uploadsField } from "./uploads.ts";
import { UploadError } from "../sandbox/mod.ts";
import { clusterField, clusterToken } from "../cluster/config.ts";
import { operatorRoutes, peerRoutes } from "../cluster/routes.ts";
import { ClusterService } from "../cluster/service.ts";
import { LinkConfigError, LinkPort } from "../cluster/link.ts";
import type { Fetch } from "../cluster/peers.ts";
import type { HostReaders } from "../cluster/usage.ts";

const nodeFields = {
  bind: opt(str({ describe: "an IP address to bind DIPRONN_INPUT ports on" }), "0.0.0.0"),
  max_sessions: opt(int({ min: 1, max: 1000 }), 16),
  sessions: opt(
    list(str({ min: 1, max: 4096, describe: "a program file" }), { max: 1000, unique: true }),
    [],
  ),
  ...udpFields,
  ...sessionFields,
  /** Absent: a single box (nothing of lib/cluster runs). */
  cluster: clusterField,
  /** User-uploaded active programs: their sandboxes' limits (lib/node/uploads.ts). */
  uploads: uploadsField,
};
type NodeSection = ObjectOf<typeof nodeFields>;

function refine(cfg: NodeSection, node: YAMLMap | null, ctx: Context, path: string): void {
  if (!isIP(cfg.bind)) {
    ctx.error(nodeAt(node, ["bind"]), `${path}.bind`, `Expected an IP address, got "${cfg.bind}"`);
  }
}

/** What a node role is built from; tests give AP kinds of their own. */
export interface NodeRoleOptions {
  /** The AP kinds sessions may use (default: the core kinds). */
  readonly elements?: () => Registry<ElementKind>;
  /** How the cluster reaches its peers' status APIs (tests route it into `app.request()`). */
  readonly fetch?: Fetch;
  /** Where usage reads CPU and memory (tests give fixed figures). */
  readonly host?: HostReaders;
}

/** The node role, with the AP kinds `options.elements` gives. */
export function defineNodeRole(options: NodeRoleOptions = {}): RoleDef<NodeSection> {
  const elements = options.elements ?? coreElements;
  return {
    name: "node",
    description: "programmable streaming node running DiProNN session graphs",
    needsPeer: false,
    section: section(nodeFields, refine),
    async start(cfg, ctx) {
      // Node-wide objects elements share (the transcoders' ffmpeg processes), ended at once past the drain deadline.
      const shared = new Map<string, unknown>();
      // With a cluster, the node's one UDP port for every link to and from its peers' APs.
      let links: LinkPort | undefined;
      if (cfg.cluster) {
        try {
          links = await LinkPort.open({
            bind: cfg.cluster.data,
            self: cfg.cluster.name,
            peers: cfg.cluster.peers,
            udp: udpOptions(cfg),
            clock: ctx.clock,
            metrics: ctx.metrics,
          });
        } catch (error) {
          if (error instanceof LinkConfigError) throw new StartError(error.message);
          throw startErrorAt(error, "node.cluster.data", "cluster link port");
        }
      }
      const table = new SessionTable(
        {
          clock: ctx.clock,
          logger: ctx.logger,
          metrics: ctx.metrics,
          dataDir: cfg.data_dir,
          host: cfg.bind,
          udp: udpOptions(cfg),
          shared,
          links,
        },
        elements(),
        {
          ...sessionOptions(cfg),
          reservationMs: cfg.cluster?.reservation_timeout,
          uploads: uploadOptions(cfg.uploads),
        },
      );
      let cluster: ClusterService | null = null;
      // The sessions of node.sessions, by file: the program text they started from, and the session it started.
      const boot = new Map<string, BootSession>();
      try {
        if (cfg.cluster) {
          cluster = await ClusterService.create({
            cfg: cfg.cluster,
            token: await clusterToken(cfg.cluster),
            table,
            clock: ctx.clock,
            logger: ctx.logger,
            metrics: ctx.metrics,
            fetch: options.fetch,
            host: options.host,
          });
        }
        for (const file of cfg.sessions) {
          const text = await readProgram(file);
          try {
            boot.set(file, { text, session: await table.add(text, { file }) });
          } catch (error) {
            if (error instanceof ErrorList) {
              throw new StartError(`Session program ${file} has errors:\n${error.format()}`);
            }
            throw error;
          }
        }
      } catch (error) {
        cluster?.stop();
        await table.stopAll();
        await links?.close();
        throw error;
      }
      let current = cfg;
      const failures = () => [...table.failed()].map(([name, why]) => `session ${name}: ${why}`);
      return {
        status: () => ({
          bind: current.bind,
          data_dir: current.data_dir,
          budgets: table.budgets(),
          sandbox_processes: table.processes(),
          sessions: Object.fromEntries(table.list().map((s) => [s.plan.name, s.status()])),
          ...(table.failed().size ? { failed: Object.fromEntries(table.failed()) } : {}),
          ...(cluster
            ? { prepared: table.prepared(), cluster: cluster.status(), links: links?.status() }
            : {}),
        }),
        stop: async (deadline) => {
          cluster?.stop();
          try {
            await stopWithin(table, shared, deadline);
          } finally {
            await links?.close();
          }
        },
        health: () => ({ ok: failures().length === 0, problems: failures() }),
        prepareReload: async (section) => {
          const next = section as NodeSection;
          const reload = await prepareNodeReload(table, boot, current, next);
          return {
            summary: reload.summary,
            commit: async (drain) => {
              current = next;
              await reload.commit(drain);
            },
            abort: () => Promise.resolve(reload.abort()),
          };
        },
        // Only with a cluster do /cluster/* routes exist, behind the cluster's signed-request guard.
        selfGuarded: cluster ? ["/cluster/"] : [],
        routes: (app) => {
          sessionRoutes(app, table);
          if (cluster) {
            peerRoutes(app, cluster);
            operatorRoutes(app, cluster);
          }
        },
      };
    },
  };
}

export const nodeRole: RoleDef<NodeSection> = defineNodeRole();

/** A session started from a file of node.sessions: the text it was started from, and the session. */
interface BootSession {
  readonly text: string;
  readonly session: RunningSession;
}

async function readProgram(file: string): Promise<string> {
  try {
    return await readTextFileLimited(file, MAX_PROGRAM_BYTES, "program");
  } catch (error) {
    throw new StartError(error instanceof UsageError ? error.message : String(error));
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Reload, phase one, for the node: boot sessions are matched by file. A file the new section adds is read and its
 * program checked (against what runs, less what the reload stops, under the new budgets); a file whose program text
 * changed replaces its session (the old one stops, then the new one starts); a file dropped stops its session; a
 * file whose text is unchanged is left alone, whatever happened to its session meanwhile (stopped over the API, it
 * stays stopped). Sessions started over the API are never touched. The new budgets, limits, bind address, data
 * directory, UDP settings and upload limits apply to sessions started from the commit on; running ones keep what
 * they started with. node.cluster is not reloaded.
 */
async function prepareNodeReload(
  table: SessionTable,
  boot: Map<string, BootSession>,
  cur: NodeSection,
  next: NodeSection,
): Promise<{ summary: ReloadSummary; commit(drain: AbortSignal): Promise<void>; abort(): void }> {
  const added: string[] = [];
  const removed: string[] = [];
  const replaced: string[] = [];
  const notes: string[] = [];
  const stop: string[] = [];
  const start: { text: string; file: string }[] = [];
  /** Whether a boot session is still the one the file started (not stopped, or its name taken, over the API). */
  const running = (b: BootSession) => table.get(b.session.plan.name) === b.session;
  const texts = new Map<string, string>();
  for (const file of next.sessions) texts.set(file, await readProgram(file));
  const replacing = new Set<string>();
  for (const [file, b] of boot) {
    const text = texts.get(file);
    if (text === b.text) continue;
    if (text !== undefined) replacing.add(file);
    if (!running(b)) continue;
    stop.push(b.session.plan.name);
    if (text === undefined) removed.push(`session ${b.session.plan.name}`);
  }
  for (const [file, text] of texts) {
    const b = boot.get(file);
    if (b?.text === text) continue;
    start.push({ text, file, ...(b && running(b) ? { replaces: b.session.plan.name } : {}) });
  }
  const { cluster: _c, sessions: _l, ...settings } = cur;
  const { cluster: _c2, sessions: _l2, ...nextSettings } = next;
  if (!sameJson(settings, nextSettings)) {
    notes.push(
      "node settings (budgets, max_sessions, bind, data_dir, udp, allow_sources, uploads) apply to sessions started from now on; running sessions keep what they started with",
    );
  }
  if (!sameJson(cur.cluster, next.cluster)) {
    notes.push("node.cluster changed: it takes effect at the next start");
  }
  let held: SessionReload;
  try {
    held = await table.prepareReload({
      options: {
        ...sessionOptions(next),
        reservationMs: cur.cluster?.reservation_timeout,
        uploads: uploadOptions(next.uploads),
      },
      host: next.bind,
      dataDir: next.data_dir,
      udp: udpOptions(next),
      stop,
      start,
    });
  } catch (error) {
    if (error instanceof ErrorList) {
      const file = (error.errors[0] as { file?: string } | undefined)?.file ?? "";
      throw new StartError(`Session program ${file} has errors:\n${error.format()}`);
    }
    if (error instanceof SessionConflict) throw new StartError(`Cannot reload the node: ${error.message}`);
    throw error;
  }
  held.plans.forEach((plan, k) => {
    (replacing.has(start[k].file) ? replaced : added).push(`session ${plan.name}`);
  });
  return {
    summary: { added, removed, changed: [], replaced, notes },
    async commit(drain) {
      const before = new Map(boot);
      const { failed, restored } = await held.commit(drain);
      for (const file of boot.keys()) if (!texts.has(file)) boot.delete(file);
      held.plans.forEach((plan, k) => {
        const file = start[k].file;
        const session = table.get(plan.name);
        const old = before.get(file);
        if (session && !failed.has(plan.name)) boot.set(file, { text: start[k].text, session });
        else if (restored.has(plan.name) && old) {
          // The file's old program runs again: a later reload compares against that text.
          boot.set(file, { text: old.text, session: table.get(old.session.plan.name)! });
        } else boot.delete(file);
      });
      // Reported as the reload's failure (the rest of it applied): the operator sees which and why.
      if (failed.size) {
        throw new StartError(
          [...failed].map(([name, why]) => `session ${name} did not start: ${why}`).join("; "),
        );
      }
    },
    abort: () => held.abort(),
  };
}

/**
 * Stops every session (no new ones are taken from the first moment) in order, inputs first so that what is in
 * flight reaches the sinks, until `deadline` aborts: the drain timeout, or a second signal. Sessions still stopping
 * then are left to end with the process (its workers and sockets go with it; child processes are killed at once),
 * and the stop fails saying so, as a
 * part that could not let go of everything must.
 */
async function stopWithin(
  table: SessionTable,
  shared: Map<string, unknown>,
  deadline: AbortSignal,
): Promise<void> {
  const names = table.list().map((s) => s.plan.name);
  const all = table.stopAll();
  all.catch(() => {}); // awaited below; a failure after the deadline has nobody left to tell
  let onAbort!: () => void;
  const cut = new Promise<false>((resolve) => onAbort = () => resolve(false));
  if (deadline.aborted) onAbort();
  else deadline.addEventListener("abort", onAbort, { once: true });
  try {
    if (await Promise.race([all.then(() => true), cut])) return;
  } finally {
    deadline.removeEventListener("abort", onAbort);
  }
  // Child processes would outlive the node: they end now (the transcoders' ffmpeg).
  hardStopShared(shared);
  // stopAll takes each session off the table as it begins to stop it: the ones still listed have not begun.
  const waiting = names.filter((n) => table.get(n) !== undefined);
  const running = Math.min(names.length, waiting.length + 1);
  throw new Error(
    `Cannot stop every session within the drain deadline: ${running} of ${names.length} still stopping${
      waiting.length ? ` (not begun: ${waiting.join(", ")})` : ""
    }; they end with the process`,
  );
}

function sessionRoutes(app: Hono, table: SessionTable): void {
  const notFound = (name: string) => ({ error: `No session "${name}"` });
  app.get("/node/sessions", (c) => c.json(table.list().map((s) => s.status())));
  app.get("/node/sessions/:name", (c) => {
    const s = table.get(c.req.param("name"));
    return s ? c.json(s.status()) : c.json(notFound(c.req.param("name")), 404);
  });
  // The body is the program. Its format: ?format=, else the Content-Type (YAML types), else the language.
  app.post("/node/sessions", async (c) => {
    const asked = c.req.query("format");
    if (asked !== undefined && !(PROGRAM_FORMATS as readonly string[]).includes(asked)) {
      return c.json({ error: `format must be one of ${PROGRAM_FORMATS.join(", ")}` }, 400);
    }
    const type = c.req.header("content-type") ?? "";
    const format: ProgramFormat = (asked as ProgramFormat | undefined) ??
      (/yaml/i.test(type) ? "yaml" : formatOf(c.req.query("file") ?? ""));
    let file = c.req.query("file") ?? "<upload>";
    let text: string;
    let modules: Record<string, string> | undefined;
    if (/^multipart\/form-data/i.test(type)) {
      // A program with the modules of its uploaded APs (lib/node/uploads.ts).
      let form: FormData;
      try {
        form = await c.req.formData();
      } catch (error) {
        return c.json({ error: `Cannot read the multipart body: ${errorMessage(error)}` }, 400);
      }
      const upload = await readUpload(form);
      if (typeof upload === "string") return c.json({ error: `Cannot use the upload: ${upload}` }, 400);
      text = upload.program;
      modules = upload.modules;
      if (upload.file && c.req.query("file") === undefined) file = upload.file;
    } else {
      text = await c.req.text();
    }
    try {
      const session = await table.add(text, {
        file,
        format: asked as ProgramFormat | undefined ?? (modules ? formatOf(file) : format),
        modules,
      });
      return c.json({
        started: session.plan.name,
        persisted: false,
        note: NOT_PERSISTED,
        ...session.status(),
      }, 201);
    } catch (error) {
      if (error instanceof ErrorList) {
        return c.json(
          { error: "The program has errors; nothing was started", errors: errorsJson(error) },
          400,
        );
      }
      if (error instanceof SessionConflict) return c.json({ error: error.message }, 409);
      if (error instanceof UploadError) {
        return c.json({ error: `${error.message}; nothing was started`, problems: error.problems }, 400);
      }
      if (error instanceof StartError) {
        return c.json({ error: `${error.message}; nothing was left running` }, 409);
      }
      throw error;
    }
  });
  app.delete("/node/sessions/:name", async (c) => {
    const name = c.req.param("name");
    if (!(await table.remove(name))) return c.json(notFound(name), 404);
    return c.json({ stopped: name, persisted: false, note: NOT_PERSISTED });
  });
}

const NOT_PERSISTED = "runtime change; a restart runs the sessions listed in node.sessions of the config";
