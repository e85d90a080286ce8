/**
 * The cluster's HTTP routes. Peers call /cluster/* (each request signed with the cluster token and each answer
 * signed back, lib/cluster/auth.ts; the bearer token does not apply there). Operators call /node/cluster/*: start a
 * session across nodes, stop it everywhere, see the placement a start would make (a dry run), and the state.
 */
import type { Context, Hono } from "hono";
import { ErrorList, errorMessage } from "../core/errors.ts";
import { readUpload } from "../node/uploads.ts";
import { UploadError } from "../sandbox/mod.ts";
import { formatOf, PROGRAM_FORMATS, type ProgramFormat } from "../graph/program.ts";
import { errorsJson } from "../node/sessions.ts";
import { clusterAuth } from "./auth.ts";
import { ClusterConflict, NODE_LOSS_ACTIONS, type NodeLossAction, UnknownNear } from "./coordinator.ts";
import { NODE_NAME } from "./config.ts";
import { parsePartRequest, PartRefused } from "./parts.ts";
import { PlacementError } from "./placement.ts";
import { SessionTooLarge } from "./store.ts";
import type { ClusterService } from "./service.ts";

type Env = { Variables: { clusterPeer: string } };

/** More nearest nodes than any cluster has members is a mistake. */
const MAX_NEAR = 64;

const NOT_PERSISTED = "runtime change; a restart runs the sessions listed in node.sessions of the config";

async function jsonBody(c: Context): Promise<Record<string, unknown> | null> {
  try {
    const v = await c.req.json();
    return typeof v === "object" && v !== null && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/** Routes peers call: signed both ways. */
export function peerRoutes(app: Hono, svc: ClusterService): void {
  const cluster = app as unknown as Hono<Env>;
  cluster.use(
    "/cluster/*",
    clusterAuth({
      key: svc.key,
      self: svc.cfg.name,
      peers: svc.peerNames,
      skewMs: svc.cfg.clock_skew,
      clock: svc.clock,
      replays: svc.replays,
      refused: (r) => svc.refused(r),
    }),
  );
  cluster.get("/cluster/usage", (c) => c.json(svc.sampler.sample()));
  cluster.post("/cluster/heartbeat", (c) => {
    svc.figures.heartbeats_received++;
    svc.heartbeats.received(c.get("clusterPeer"));
    return c.json({ node: svc.cfg.name, at: svc.clock.now() });
  });
  cluster.post("/cluster/sessions/:name/prepare", async (c) => {
    const name = c.req.param("name");
    svc.figures.prepares++;
    const req = parsePartRequest(await jsonBody(c));
    if (typeof req === "string") {
      svc.figures.prepares_refused++;
      return c.json({ error: `Cannot prepare session ${name}: ${req}` }, 400);
    }
    if (req.coordinator !== c.get("clusterPeer")) {
      svc.figures.prepares_refused++;
      return c.json({ error: `Cannot prepare session ${name}: only its coordinator may ask` }, 403);
    }
    try {
      const part = await svc.parts.prepare(name, req);
      return c.json({ prepared: name, attempt: req.attempt, ...part });
    } catch (error) {
      if (!(error instanceof PartRefused)) throw error;
      svc.figures.prepares_refused++;
      return c.json({ error: error.reason, errors: error.errors }, 409);
    }
  });
  cluster.post("/cluster/sessions/:name/commit", async (c) => {
    const name = c.req.param("name");
    const attempt = (await jsonBody(c))?.attempt;
    if (typeof attempt !== "string") return c.json({ error: 'Body must be {"attempt": ...}' }, 400);
    try {
      await svc.parts.commit(name, attempt);
      return c.json({ committed: name, attempt });
    } catch (error) {
      if (!(error instanceof PartRefused)) throw error;
      return c.json({ error: error.reason }, 409);
    }
  });
  cluster.post("/cluster/sessions/:name/abort", async (c) => {
    const attempt = (await jsonBody(c))?.attempt;
    if (typeof attempt !== "string") return c.json({ error: 'Body must be {"attempt": ...}' }, 400);
    return c.json({
      session: c.req.param("name"),
      undone: await svc.parts.abort(c.req.param("name"), attempt),
    });
  });
  cluster.post("/cluster/sessions/:name/stop", async (c) => {
    return c.json({ session: c.req.param("name"), undone: await svc.parts.stop(c.req.param("name")) });
  });
}

/** Routes operators call: behind the status API's bearer token like every mutating route. */
export function operatorRoutes(app: Hono, svc: ClusterService): void {
  const program = async (c: Context) => {
    const asked = c.req.query("format");
    if (asked !== undefined && !(PROGRAM_FORMATS as readonly string[]).includes(asked)) {
      return { error: `format must be one of ${PROGRAM_FORMATS.join(", ")}` };
    }
    const type = c.req.header("content-type") ?? "";
    const format: ProgramFormat = (asked as ProgramFormat | undefined) ??
      (/yaml/i.test(type) ? "yaml" : formatOf(c.req.query("file") ?? ""));
    // Nodes nearest to the receivers, best first: `near=prague,liberec` (the body is the program).
    const near = (c.req.query("near") ?? "").split(",").map((n) => n.trim()).filter((n) => n !== "");
    if (near.length > MAX_NEAR || near.some((n) => !NODE_NAME.test(n))) {
      return { error: `near must be at most ${MAX_NEAR} node names, comma-separated` };
    }
    const loss = c.req.query("on_node_loss");
    if (loss !== undefined && !(NODE_LOSS_ACTIONS as readonly string[]).includes(loss)) {
      return { error: `on_node_loss must be one of ${NODE_LOSS_ACTIONS.join(", ")}` };
    }
    let file = c.req.query("file") ?? "<upload>";
    if (!/^multipart\/form-data/i.test(type)) {
      return { text: await c.req.text(), file, format, onNodeLoss: loss as NodeLossAction | undefined, near };
    }
    // A program with the modules of its uploaded APs, as POST /node/sessions takes it (lib/node/uploads.ts).
    let form: FormData;
    try {
      form = await c.req.formData();
    } catch (error) {
      return { error: `Cannot read the multipart body: ${errorMessage(error)}` };
    }
    const upload = await readUpload(form);
    if (typeof upload === "string") return { error: `Cannot use the upload: ${upload}` };
    if (upload.file && c.req.query("file") === undefined) file = upload.file;
    return {
      text: upload.program,
      file,
      format: (asked as ProgramFormat | undefined) ?? formatOf(file),
      onNodeLoss: loss as NodeLossAction | undefined,
      near,
      modules: upload.modules,
    };
  };
  const refused = (c: Context, error: unknown) => {
    if (error instanceof ErrorList) {
      return c.json({ error: "The program has errors; nothing was started", errors: errorsJson(error) }, 400);
    }
    if (error instanceof PlacementError) return c.json({ error: error.message }, 409);
    if (error instanceof ClusterConflict) return c.json({ error: error.message }, 409);
    if (error instanceof UnknownNear) return c.json({ error: error.message }, 400);
    if (error instanceof SessionTooLarge) {
      return c.json({ error: `${error.message}; nothing was started` }, 400);
    }
    if (error instanceof UploadError) {
      return c.json({ error: `${error.message}; nothing was started`, problems: error.problems }, 400);
    }
    throw error;
  };

  app.get("/node/cluster", (c) => c.json(svc.status()));
  app.post("/node/cluster/plan", async (c) => {
    const p = await program(c);
    if ("error" in p) return c.json(p, 400);
    try {
      return c.json({ dry_run: true, ...(await svc.coordinator.plan(p.text, p)) });
    } catch (error) {
      return refused(c, error);
    }
  });
  app.post("/node/cluster/sessions", async (c) => {
    const p = await program(c);
    if ("error" in p) return c.json(p, 400);
    svc.figures.starts++;
    try {
      const outcome = await svc.coordinator.start(p.text, p);
      if (outcome.state !== "running") {
        svc.figures.starts_failed++;
        return c.json({ error: `${outcome.reason}; nothing was left running`, ...outcome }, 409);
      }
      return c.json({ started: outcome.session, persisted: false, note: NOT_PERSISTED, ...outcome }, 201);
    } catch (error) {
      svc.figures.starts_failed++;
      return refused(c, error);
    }
  });
  app.delete("/node/cluster/sessions/:name", async (c) => {
    let outcome;
    try {
      outcome = await svc.stopSession(c.req.param("name"));
    } catch (error) {
      if (error instanceof ClusterConflict) return c.json({ error: error.message }, 409);
      throw error;
    }
    if (!outcome) {
      const where = svc.etcd ? "coordinated here or stored in etcd" : "coordinated here";
      return c.json({ error: `No session "${c.req.param("name")}" ${where}` }, 404);
    }
    return c.json({ stopped: outcome.session, persisted: false, note: NOT_PERSISTED, ...outcome });
  });
}
