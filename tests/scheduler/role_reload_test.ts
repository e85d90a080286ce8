/**
 * The scheduler role's reload, through its prepare/commit contract, with real loopback sockets: a service that moves to
 * another address under the same name, services swapping names, and a removed server whose connections the drain
 * deadline cuts. What an operator notices: the new address serves, the old one refuses, /metrics has one series per
 * service, and nothing keeps running past the drain.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { schedulerRole } from "../../lib/scheduler/role.ts";
import { Backend, clientsOn, fetchName } from "../_support/backends.ts";
import { freeTcpPort } from "../_support/ports.ts";
import { within } from "../_support/until.ts";

const LO = "127.0.0.1";

function section(services: string) {
  const plan = loadConfig(`roles: [scheduler]\nscheduler:\n  io: fast\n  services:\n${services}`, {
    file: "s.yaml",
    roles: builtinRoles(),
  });
  return plan.sections.scheduler;
}

const service = (name: string, port: number, servers: Backend[]) =>
  `    - name: ${name}\n      listen: ${LO}:${port}\n      picker: roundrobin\n      servers: [${
    servers.map((s) => `{address: "${s.address}"}`).join(", ")
  }]\n`;

async function startRole(text: string) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const metrics = new MetricsRegistry();
  const role = await schedulerRole.start(section(text) as never, {
    nodeName: "n",
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    metrics,
    clock,
  });
  return { role, metrics, [Symbol.asyncDispose]: () => role.stop(AbortSignal.abort()) };
}

async function refused(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: LO, port })).close();
    return false;
  } catch {
    return true;
  }
}

Deno.test("a service that moves to another address keeps its name: the new address serves, the old one refuses", async () => {
  await using a = new Backend("A");
  const [p1, p2] = [freeTcpPort(), freeTcpPort()];
  await using env = await startRole(service("web", p1, [a]));
  const r = await env.role.prepareReload!(section(service("web", p2, [a])));
  assert.deepEqual(r.summary.added, ["service web"]);
  assert.deepEqual(r.summary.removed, ["service web"]);
  await r.commit(new AbortController().signal);
  assert.equal(await fetchName(p2), "A");
  assert.equal(await refused(p1), true, "the old address takes no new client");
  const series = env.metrics.render().match(
    /^edgenode_scheduler_service_accepted_total\{service="web"\} \d+$/gm,
  );
  assert.equal(series?.length, 1, "one series for web");
});

Deno.test("two services that swap names are both served at their addresses after the reload", async () => {
  await using a = new Backend("A");
  await using b = new Backend("B");
  const [p1, p2] = [freeTcpPort(), freeTcpPort()];
  await using env = await startRole(service("one", p1, [a]) + service("two", p2, [b]));
  const r = await env.role.prepareReload!(section(service("two", p1, [a]) + service("one", p2, [b])));
  await r.commit(new AbortController().signal);
  assert.equal(await fetchName(p1), "A");
  assert.equal(await fetchName(p2), "B");
  const services = env.role.status().services as Record<string, { listen: string }>;
  assert.equal(services.two.listen, `${LO}:${p1}`);
  assert.equal(services.one.listen, `${LO}:${p2}`);
});

Deno.test("a removed server's open connection lasts until the drain deadline, and is cut then", async () => {
  await using a = new Backend("A");
  await using b = new Backend("B");
  const port = freeTcpPort();
  await using env = await startRole(service("web", port, [a, b]));
  const [onB] = await clientsOn(port, "B", 1);
  try {
    const drain = new AbortController();
    const r = await env.role.prepareReload!(section(service("web", port, [a])));
    await r.commit(drain.signal);
    await onB.write("still there?\n");
    assert.equal(await onB.readLine(), "still there?");
    drain.abort();
    assert.equal(await within(onB.ended(), 2000), true, "cut at the deadline");
  } finally {
    onB[Symbol.dispose]();
  }
});

Deno.test("a scheduler reload that cannot bind a new service changes nothing and names the address", async () => {
  await using a = new Backend("A");
  const [p1, busy] = [freeTcpPort(), freeTcpPort()];
  using _holder = Deno.listen({ hostname: LO, port: busy });
  await using env = await startRole(service("web", p1, [a]));
  await assert.rejects(
    env.role.prepareReload!(section(service("web", p1, [a]) + service("more", busy, [a]))),
    new RegExp(`${LO}:${busy}`),
  );
  assert.deepEqual(Object.keys(env.role.status().services as object), ["web"]);
  assert.equal(await fetchName(p1), "A");
});
