/**
 * What the scheduler's end-to-end tests share: starting a scheduler process on a config, and reading its services
 * and servers from /status the way an operator would.
 */
import assert from "node:assert/strict";
import { getJson, getText, LISTENING, startEdgenode } from "./_process.ts";

export const LO = "127.0.0.1";
/** The status API token the tests' configs set. */
export const TOKEN = "e2e-scheduler-token-0123456789";

export interface ServerStatus {
  server: string;
  state: string;
  weight: number;
  scaled_weight: number;
  effective_weight: number;
  maxconn: number;
  active: number;
  total: number;
  failed_connects: number;
  changed_at: string;
  load_percent: number | null;
  last_check: { ok: boolean; detail: string } | null;
  last_agent: { ok: boolean; detail: string; reply: string | null; problems: string[] } | null;
}

export interface ServiceStatus {
  listen: string;
  origin: string;
  servers: ServerStatus[];
  [counter: string]: unknown;
}

export async function services(statusPort: number): Promise<Record<string, ServiceStatus>> {
  const status = await getJson(`http://${LO}:${statusPort}/status`);
  return (status.roles as { scheduler: { services: Record<string, ServiceStatus> } }).scheduler.services;
}

export async function serverStatus(statusPort: number, service: string, key: string): Promise<ServerStatus> {
  const found = (await services(statusPort))[service].servers.find((s) => s.server === key);
  assert.ok(found, `server ${key} in ${service}`);
  return found;
}

/** The port a service bound (it was asked for port 0): what /status shows as its `listen`. */
export function listenPort(all: Record<string, ServiceStatus>, service: string): number {
  return Number(/:(\d+)$/.exec(all[service].listen)![1]);
}

/** Starts edgenode with `config` and returns it with its status port. */
export async function startScheduler(config: { path: string }) {
  const edgenode = startEdgenode(["--config", config.path, "--status", `${LO}:0`]);
  const [, statusPort] = await edgenode.waitForLine(LISTENING);
  return { edgenode, statusPort: Number(statusPort) };
}

export function counts(map: Map<string | null, number>): Record<string, number> {
  return Object.fromEntries([...map].map(([k, v]) => [String(k), v]));
}

/** POSTs `body` to a server's operations route with the token; returns the JSON answer. */
export async function setServer(
  statusPort: number,
  service: string,
  key: string,
  body: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const response = await fetch(`http://${LO}:${statusPort}/scheduler/services/${service}/servers/${key}`, {
    method: "POST",
    body: JSON.stringify(body),
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(response.status, 200, `POST ${service}/${key}`);
  return await response.json();
}

/** A regular expression for one whole line of /metrics. */
function metricLine(text: string): RegExp {
  return new RegExp(`^${text.replace(/[{}.]/g, "\\$&")}$`, "m");
}

/** Fetches /metrics and asserts that each of `lines` stands in it as a whole line; returns the text. */
export async function assertMetrics(statusPort: number, lines: readonly string[]): Promise<string> {
  const text = await getText(`http://${LO}:${statusPort}/metrics`);
  for (const line of lines) assert.match(text, metricLine(line));
  return text;
}
