/**
 * The `node.cluster` config section: this node's name among its peers, the shared cluster token (inline or in a
 * file), the link data address, the peers, and the heartbeat and loss timing. Declared with the config schema
 * helpers, so every mistake comes back with file:line:col and `--check` validates it without starting anything.
 * Without the section a node is a single box and nothing here runs.
 */
import { isScalar, type YAMLMap } from "yaml";
import {
  absolutePath,
  type Context,
  duration,
  hostPort,
  INVALID,
  list,
  nodeAt,
  nullable,
  obj,
  type ObjectOf,
  opt,
  req,
  type Schema,
  str,
} from "../config/schema.ts";
import { StartError } from "../core/errors.ts";
import { formatHostPort } from "../net/address.ts";

/** A node name is a label value and part of signed request text: short and plain. */
export const NODE_NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
/** The shortest cluster token accepted: a shorter one can be guessed. */
export const MIN_TOKEN_CHARS = 16;
/** Peers one node may list: every heartbeat and start fans out to them. */
export const MAX_PEERS = 64;

/** A number in [min, max] (the schema helpers have integers only). */
function num(o: { min: number; max: number }): Schema<number> {
  const describe = `a number in ${o.min}..${o.max}`;
  return {
    describe,
    check(site, ctx) {
      const v = site.node && isScalar(site.node) ? site.node.value : undefined;
      if (typeof v !== "number" || !Number.isFinite(v) || v < o.min || v > o.max) {
        ctx.error(
          site.node ?? site.anchor,
          site.path,
          `Expected ${describe}, got ${JSON.stringify(v ?? null)}`,
        );
        return INVALID;
      }
      return v;
    },
  };
}

const nodeName = (what: string) =>
  str({ pattern: NODE_NAME, describe: `${what} (letters, digits, "_" and "-", up to 64)` });

const peerFields = {
  name: req(nodeName("a peer's node name")),
  api: req(hostPort(), "the peer's status API address (ADDRESS:PORT), where /cluster/* is served"),
  data: req(hostPort({ ipOnly: true }), "the peer's link UDP address"),
};

export const clusterFields = {
  name: req(nodeName("this node's name among its peers")),
  token: opt(
    nullable(str({ min: MIN_TOKEN_CHARS, max: 4096, describe: "the shared cluster token" })),
    null,
    "the shared cluster token (or token_file)",
  ),
  token_file: opt(
    nullable(absolutePath("an absolute path of a file holding the cluster token")),
    null,
    "a file holding the shared cluster token, read at start",
  ),
  data: req(hostPort({ ipOnly: true }), "this node's link UDP address"),
  peers: opt(
    list(obj(peerFields, "a peer: { name, api, data }"), {
      max: MAX_PEERS,
      uniqueBy: { key: (p) => p.name, what: "peer name" },
    }),
    [],
  ),
  heartbeat: opt(
    duration({ min: 50, max: 60_000 }),
    1000,
    "how often parts of a session tell each other they live",
  ),
  loss_timeout: opt(
    duration({ min: 100, max: 600_000 }),
    3000,
    "a peer silent this long is declared lost",
  ),
  prepare_timeout: opt(
    duration({ min: 100, max: 120_000 }),
    5000,
    "how long a start waits for each node's prepare and commit answer",
  ),
  reservation_timeout: opt(
    duration({ min: 100, max: 600_000 }),
    30_000,
    "how long a prepared part holds its ports without a commit",
  ),
  load_threshold: opt(
    num({ min: 0.05, max: 2 }),
    0.85,
    "placement gives a node no more APs once its CPU or memory share would pass this (above 1: never for load)",
  ),
  clock_skew: opt(
    duration({ min: 1000, max: 600_000 }),
    30_000,
    "how far a signed request's timestamp may be from this node's clock",
  ),
  etcd: opt(
    list(
      str({ pattern: /^https?:\/\/\S+$/, describe: "an etcd endpoint URL such as http://10.0.0.9:2379" }),
      {
        max: 16,
        unique: true,
      },
    ),
    [],
    "etcd endpoints for membership and sessions (empty: none)",
  ),
};
export type ClusterSection = ObjectOf<typeof clusterFields>;

function refine(cfg: ClusterSection, node: YAMLMap | null, ctx: Context, path: string): void {
  if ((cfg.token === null) === (cfg.token_file === null)) {
    ctx.error(
      nodeAt(node, cfg.token !== null ? ["token"] : []),
      `${path}.token`,
      cfg.token === null
        ? "Expected token or token_file (the shared cluster token)"
        : "Give token or token_file, not both",
    );
  }
  if (cfg.loss_timeout <= cfg.heartbeat) {
    ctx.error(
      nodeAt(node, ["loss_timeout"]),
      `${path}.loss_timeout`,
      `loss_timeout must be longer than heartbeat (${cfg.heartbeat} ms), got ${cfg.loss_timeout} ms`,
    );
  }
  const apis = new Map<string, number>();
  cfg.peers.forEach((p, i) => {
    if (p.name === cfg.name) {
      ctx.error(
        nodeAt(node, ["peers", i, "name"]),
        `${path}.peers[${i}].name`,
        `A peer may not bear this node's name "${cfg.name}"`,
      );
    }
    const api = formatHostPort(p.api);
    const first = apis.get(api);
    if (first !== undefined) {
      ctx.error(
        nodeAt(node, ["peers", i, "api"]),
        `${path}.peers[${i}].api`,
        `Peers ${cfg.peers[first].name} and ${p.name} share the API address ${api}`,
      );
    } else apis.set(api, i);
  });
}

/** The `cluster:` key of the node section: absent or null means a single box. */
export const clusterField = opt(
  nullable(
    obj(clusterFields, "a mapping: name, token or token_file, data, peers, heartbeat, loss_timeout", refine),
  ),
  null,
  "peers, token and timing of a node that runs sessions across nodes",
);

/** Reads the cluster token (inline or from its file); refuses a short one. */
export async function clusterToken(
  cfg: ClusterSection,
  read: (path: string) => Promise<string> = (p) => Deno.readTextFile(p),
): Promise<string> {
  let token = cfg.token;
  // Named by its key, so that a start (and --check) says where in the config it is.
  const configPath = token === null ? "node.cluster.token_file" : "node.cluster.token";
  if (token === null) {
    try {
      token = (await read(cfg.token_file!)).trim();
    } catch (error) {
      throw new StartError(
        `Cannot read the cluster token file ${cfg.token_file}: ${(error as Error).message}`,
        { configPath },
      );
    }
  }
  if (token.length < MIN_TOKEN_CHARS) {
    throw new StartError(
      `Cannot use the cluster token${
        cfg.token_file ? ` of ${cfg.token_file}` : ""
      }: it has ${token.length} characters, at least ${MIN_TOKEN_CHARS} are needed`,
      { configPath },
    );
  }
  return token;
}

/** The section as /status shows it: never the token, nor the token file's content. */
export function clusterSummary(cfg: ClusterSection): Record<string, unknown> {
  return {
    name: cfg.name,
    token: cfg.token_file ? `from ${cfg.token_file}` : "inline (hidden)",
    data: formatHostPort(cfg.data),
    peers: cfg.peers.map((p) => ({ name: p.name, api: formatHostPort(p.api), data: formatHostPort(p.data) })),
    heartbeat_ms: cfg.heartbeat,
    loss_timeout_ms: cfg.loss_timeout,
    prepare_timeout_ms: cfg.prepare_timeout,
    reservation_timeout_ms: cfg.reservation_timeout,
    load_threshold: cfg.load_threshold,
    etcd: cfg.etcd,
  };
}
