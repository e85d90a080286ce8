/**
 * The scheduler's config section: virtual services (a VIP:vport) each with a pool of real servers, how servers are
 * picked, checked and limited. A server may be one address (`10.0.0.5:80`) or a port range on one host
 * (`10.0.0.5:7070-7073`, one server process per port). Services can also come from a Central Dispatch
 * `agent-rules` file (`rules`), taking the settings of `rules_service`.
 */
import {
  type Context,
  defaultsOf,
  duration,
  type Field,
  hostPort,
  int,
  INVALID,
  list,
  nodeAt,
  nullable,
  obj,
  type ObjectOf,
  oneOf,
  opt,
  req,
  type Schema,
  str,
} from "../config/schema.ts";
import { formatHostPort, type HostPort, isIP, parseHostPort } from "../net/address.ts";
import { type TransportChoice, TRANSPORTS } from "../net/tcp/transport.ts";
import type { YAMLMap } from "yaml";
import type { ConfigWhole, WholeChecked } from "../config/plan.ts";

/** Connections at once one client address may hold in a service unless `max_per_client` says otherwise. */
export const DEFAULT_MAX_PER_CLIENT = 1000;
/** Most servers one service may hold once port ranges are expanded. */
export const MAX_SERVERS = 256;
/** The largest weight a server can have, configured, set over the API or scaled by its agent (HAProxy's limit). */
export const MAX_WEIGHT = 256;
export const PICKERS = ["roundrobin", "weighted", "leastconn", "leastload", "sourcehash"] as const;
export const ADMIN_STATES = ["ready", "drain", "maint"] as const;
export type AdminState = typeof ADMIN_STATES[number];

/** `IP:PORT` or `IP:LOW-HIGH`: the servers a pool entry stands for, one per port. */
export interface ServerAddress {
  readonly host: string;
  readonly low: number;
  readonly high: number;
}

const SERVER_DESCRIBE = "IP:PORT or IP:LOW-HIGH such as 10.0.0.5:80 or [::1]:7070-7073";

function serverAddress(): Schema<ServerAddress> {
  const text = str({ max: 80, describe: SERVER_DESCRIBE });
  return {
    describe: SERVER_DESCRIBE,
    check(site, ctx) {
      const value = text.check(site, ctx);
      if (value === INVALID) return INVALID;
      const where = site.node ?? site.anchor;
      const fail = (message: string): typeof INVALID => (ctx.error(where, site.path, message), INVALID);
      const range = /^(.*):([0-9]+)-([0-9]+)$/.exec(value);
      const parsed = parseHostPort(range ? `${range[1]}:${range[2]}` : value);
      if (typeof parsed === "string") return fail(parsed);
      if (!isIP(parsed.host)) return fail(`Expected an IP address, not the host name "${parsed.host}"`);
      const low = parsed.port;
      const high = range ? Number(range[3]) : low;
      if (low === 0 || high > 65535 || high < low) {
        return fail(`Port range ${low}-${high} must run upwards within 1..65535`);
      }
      if (high - low + 1 > MAX_SERVERS) {
        return fail(`A port range holds at most ${MAX_SERVERS} ports, not ${high - low + 1}`);
      }
      return Object.freeze({ host: parsed.host, low, high });
    },
  };
}

const serverItem = obj({
  address: req(serverAddress()),
  weight: opt(int({ min: 0, max: MAX_WEIGHT }), 1),
  /** Where the server's load agent answers (HAProxy agent-check format); null: no agent. */
  agent: opt(nullable(hostPort({ ipOnly: true })), null),
  /** Connections at once; beyond it clients wait in the service's queue. 0: no limit. */
  maxconn: opt(int({ min: 0, max: 1_000_000 }), 0),
  state: opt(oneOf(ADMIN_STATES), "ready" as AdminState),
});
export type ServerSpec = ObjectOf<typeof serverItem.fields>;

const checkFields = {
  interval: opt(duration({ min: 100, max: 3_600_000 }), 2000),
  timeout: opt(duration({ min: 10, max: 60_000 }), 1000),
  /** Good checks in a row that bring a down server back (Central Dispatch's auto re-enable). */
  rise: opt(int({ min: 1, max: 100 }), 2),
  /** Failed checks (or failed client connects) in a row that take a server down. */
  fall: opt(int({ min: 1, max: 100 }), 3),
  /** Sent after connecting; with `expect`, the reply must contain it. Null: a TCP connect is the check. */
  send: opt(nullable(str({ max: 1024 })), null),
  expect: opt(nullable(str({ max: 1024 })), null),
};

const serviceFields = {
  picker: opt(oneOf(PICKERS), "leastconn" as typeof PICKERS[number]),
  /** How long a client address sticks to its server after its last connection (0: no persistence). */
  persistence: opt(duration({ min: 0, max: 24 * 3_600_000 }), 0),
  check: opt(obj(checkFields), defaultsOf(checkFields)),
  agent_interval: opt(duration({ min: 100, max: 3_600_000 }), 2000),
  agent_timeout: opt(duration({ min: 10, max: 60_000 }), 1000),
  /** Clients waiting for a server below its maxconn, and for how long. */
  queue: opt(int({ min: 0, max: 100_000 }), 256),
  queue_timeout: opt(duration({ min: 1, max: 600_000 }), 5000),
  /**
   * Connections at once from one client address (0: no limit), and in the whole service. The per-client default
   * keeps one address (a scanner, a client in a reconnect loop) from taking more than a tenth of the default
   * max_connections; a service behind a large NAT or a load test from one host raises it or sets 0.
   */
  max_per_client: opt(int({ min: 0, max: 1_000_000 }), DEFAULT_MAX_PER_CLIENT),
  max_connections: opt(int({ min: 1, max: 1_000_000 }), 10_000),
  connect_timeout: opt(duration({ min: 10, max: 60_000 }), 2000),
  /** Other servers tried when a connect fails, before the client is closed. */
  retries: opt(int({ min: 0, max: 16 }), 3),
  idle_timeout: opt(duration({ min: 1000, max: 7 * 24 * 3_600_000 }), 600_000),
  proxy_protocol: opt(oneOf(["none", "v1", "v2"] as const), "none" as "none" | "v1" | "v2"),
  /** The redirect route's URL for a chosen server: {host}, {port} and {path} are filled in. */
  redirect: opt(str({ max: 512 }), "rtsp://{host}:{port}{path}"),
};
export type ServiceSettings = ObjectOf<typeof serviceFields>;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

const serviceItem = obj({
  name: req(str({ pattern: NAME, describe: "a service name (letters, digits, '.', '_', '-')" })),
  listen: req(hostPort({ ipOnly: true })),
  servers: req(list(serverItem, { min: 1, max: MAX_SERVERS })),
  ...serviceFields,
});
export type ServiceSpec = ObjectOf<typeof serviceItem.fields>;

/** A file path; a relative one is taken from the folder of the config file that names it, not from the cwd. */
function pathFromConfigFolder(): Schema<string> {
  const text = str({ min: 1, max: 4096, describe: "a file path" });
  return {
    describe: text.describe,
    check(site, ctx) {
      const value = text.check(site, ctx);
      const slash = ctx.file.lastIndexOf("/");
      if (value === INVALID || value.startsWith("/") || slash < 0) return value;
      return ctx.file.slice(0, slash + 1) + value;
    },
  };
}

export { type TransportChoice, TRANSPORTS } from "../net/tcp/transport.ts";

/** A peer scheduler's status API: `http://ADDRESS:PORT`, where it serves /scheduler/share. */
const PEER_URL = /^https?:\/\/(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}\/?$/;

/**
 * Shared state with backup schedulers (lib/scheduler/share.ts): persistence entries and the operator's runtime state
 * and weight go to every peer in batches over its status API, so a client keeps its server when the VIP moves.
 */
const shareFields = {
  /** The other schedulers' status APIs (empty: etcd only). */
  peers: opt(
    list(str({ pattern: PEER_URL, describe: "a peer's status API URL such as http://10.0.0.3:8080" }), {
      max: 16,
      unique: true,
    }),
    [],
  ),
  /** The peers' status.token (give every scheduler the same status.token and put it here too). */
  token: opt(nullable(str({ min: 16, max: 512, describe: "the peers' status.token" })), null),
  /** etcd endpoints to share through as well as (or instead of) the peers (empty: none). */
  etcd: opt(
    list(
      str({ pattern: /^https?:\/\/\S+$/, describe: "an etcd endpoint URL such as http://10.0.0.9:2379" }),
      {
        max: 16,
        unique: true,
      },
    ),
    [],
  ),
  /** Where in etcd the schedulers of one pair keep their shared state (one prefix per pair). */
  etcd_prefix: opt(
    str({
      pattern: /^\/[\x21-\x7e]{0,200}\/$/,
      describe: 'a key prefix from "/" to "/" such as /edgenode/web/',
    }),
    "/edgenode/scheduler/share/",
  ),
  /** How long a persistence entry stays in etcd after it was last written (at least the longest persistence). */
  etcd_ttl: opt(duration({ min: 10_000, max: 7 * 24 * 3_600_000 }), 3_600_000),
  /** How often changes go out (one batch per peer at a time). */
  interval: opt(duration({ min: 10, max: 60_000 }), 200),
  /** How long a push or a snapshot request may take. */
  timeout: opt(duration({ min: 10, max: 60_000 }), 1000),
  /** Changes in one push (a push must stay under the peer's status.max_body: about 60 bytes a change). */
  max_batch: opt(int({ min: 1, max: 10_000 }), 2000),
  /** Changes waiting for one peer; beyond it new ones are dropped and counted. */
  max_queue: opt(int({ min: 1, max: 1_000_000 }), 100_000),
};
export type ShareSection = ObjectOf<typeof shareFields>;

/** Peers need the token; something to share with is needed. */
function checkShare(cfg: ShareSection, node: YAMLMap | null, ctx: Context, path: string): void {
  if (cfg.peers.length > 0 && cfg.token === null) {
    ctx.error(
      nodeAt(node, ["peers"]),
      `${path}.token`,
      "Expected token (the peers' status.token) with peers",
    );
  }
  if (cfg.peers.length === 0 && cfg.etcd.length === 0) {
    ctx.error(nodeAt(node, []), `${path}.peers`, "Expected peers or etcd (something to share with)");
  }
}

const schedulerFields = {
  services: opt(
    list(serviceItem, { max: 256, uniqueBy: { key: (s) => s.name, what: "service name" } }),
    [],
  ),
  /** A Central Dispatch agent-rules file whose lines become services (resolved from the config file's folder). */
  rules: opt(nullable(pathFromConfigFolder()), null),
  /** Settings for the services the rules file makes. */
  rules_service: opt(obj(serviceFields), defaultsOf(serviceFields)),
  /** Proxy buffer per direction of a connection, in bytes. */
  buffer: opt(int({ min: 4096, max: 1 << 20 }), 64 * 1024),
  /** What carries connections: fast (epoll through FFI, Linux), portable (Deno sockets), auto. */
  io: opt(oneOf(TRANSPORTS), "auto" as TransportChoice),
  /** Backup schedulers this one shares persistence and runtime server state with (null: none). */
  share: opt(
    nullable(obj(shareFields, "a mapping: { peers, token, etcd, interval, ... }", checkShare)),
    null,
  ),
};
export type SchedulerSection = ObjectOf<typeof schedulerFields>;

/**
 * Two services may not listen on one address and port (port 0 takes a fresh port for each, so it never clashes); a
 * server's ports are counted after expansion.
 */
function checkServices(cfg: SchedulerSection, node: YAMLMap | null, ctx: Context, path: string): void {
  const seen = new Map<string, number>();
  cfg.services.forEach((s, i) => {
    const key = s.listen.port === 0 ? `${i}` : formatHostPort(s.listen);
    const at = nodeAt(node, ["services", i, "listen"]);
    const first = seen.get(key);
    if (first !== undefined) {
      ctx.error(
        at,
        `${path}.services[${i}].listen`,
        `Service "${s.name}" listens on ${key} as service "${cfg.services[first].name}" does`,
      );
    }
    seen.set(key, i);
    const count = s.servers.reduce((n, v) => n + v.address.high - v.address.low + 1, 0);
    if (count > MAX_SERVERS) {
      ctx.error(
        nodeAt(node, ["services", i, "servers"]),
        `${path}.services[${i}].servers`,
        `A service holds at most ${MAX_SERVERS} servers once port ranges are expanded, not ${count}`,
      );
    }
  });
}

/**
 * Peers push to this box's status API with its status.token, so a box with peers needs one: without it every push
 * from a peer would be refused (403).
 */
function checkWhole(
  cfg: SchedulerSection,
  whole: ConfigWhole,
  node: YAMLMap | null,
  ctx: Context,
  path: string,
) {
  if (cfg.share && cfg.share.peers.length > 0 && whole.status.token === null) {
    ctx.error(
      nodeAt(node, ["share", "peers"]),
      `${path}.share.peers`,
      "Expected status.token with share.peers (the peers push to this box's status API with it)",
    );
  }
}

export const schedulerSection: Field<SchedulerSection> & WholeChecked<SchedulerSection> = {
  ...opt(obj(schedulerFields, "a mapping", checkServices), defaultsOf(schedulerFields)),
  checkWhole,
};

/** One real server after port ranges are expanded. */
export interface PlannedServer {
  readonly addr: HostPort;
  readonly key: string;
  readonly spec: ServerSpec;
}

export function expandServers(servers: readonly ServerSpec[]): PlannedServer[] {
  const out: PlannedServer[] = [];
  for (const spec of servers) {
    for (let port = spec.address.low; port <= spec.address.high; port++) {
      const addr = { host: spec.address.host, port };
      out.push({ addr, key: formatHostPort(addr), spec });
    }
  }
  return out;
}
