/** GET /healthz from the running roles' health, as keepalived's vrrp_script and a load balancer read it. */
import assert from "node:assert/strict";
import { type AppDeps, createApp } from "../../lib/api/app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { RoleHealth } from "../../lib/roles/role.ts";

function appWith(roles: Record<string, { health?(): RoleHealth }> | undefined, stopping?: () => boolean) {
  const clock = new ManualClock(0);
  const deps: AppDeps = {
    name: "sched1",
    version: "test",
    clock,
    startedAt: 0,
    metrics: new MetricsRegistry(),
    roles: () => ({}),
    token: null,
    maxBody: 1024,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    ...(roles ? { health: () => Object.entries(roles) } : {}),
    ...(stopping ? { stopping } : {}),
  };
  return createApp(deps);
}

const ok = (): RoleHealth => ({ ok: true, problems: [] });

Deno.test("GET /healthz answers 200 ok when every role is healthy or has no health", async () => {
  const app = appWith({ scheduler: { health: ok }, relay: {} });
  const res = await app.request("/healthz");
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "ok\n");
  assert.equal(res.headers.get("cache-control"), "no-store");
});

Deno.test("GET /healthz answers ok without any health source (the appliance before it passes one)", async () => {
  const res = await appWith(undefined).request("/healthz");
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "ok\n");
});

Deno.test("GET /healthz answers 503 with one line per problem, prefixed with the role", async () => {
  let problems = ["service web: no healthy server", "service rtsp: not listening on 10.0.0.1:554"];
  const app = appWith({
    scheduler: { health: () => ({ ok: problems.length === 0, problems }) },
    agent: { health: ok },
  });
  const res = await app.request("/healthz");
  assert.equal(res.status, 503);
  assert.equal(
    await res.text(),
    "scheduler: service web: no healthy server\nscheduler: service rtsp: not listening on 10.0.0.1:554\n",
  );
  problems = [];
  const again = await app.request("/healthz");
  assert.equal(again.status, 200, "health is read on every request");
});

Deno.test("GET /healthz answers JSON per role when asked with Accept: application/json", async () => {
  const app = appWith({
    scheduler: { health: () => ({ ok: false, problems: ["service web: no healthy server"] }) },
    relay: {},
  });
  const res = await app.request("/healthz", { headers: { accept: "application/json" } });
  assert.equal(res.status, 503);
  assert.deepEqual(await res.json(), {
    ok: false,
    roles: {
      scheduler: { ok: false, problems: ["service web: no healthy server"] },
      relay: { ok: true, problems: [] },
    },
  });
  const healthy = await appWith({ relay: {} }).request("/healthz", {
    headers: { accept: "application/json" },
  });
  assert.equal(healthy.status, 200);
  assert.deepEqual(await healthy.json(), { ok: true, roles: { relay: { ok: true, problems: [] } } });
});

Deno.test("GET /healthz counts a role whose health throws, or is not ok without a reason, as unhealthy", async () => {
  const app = appWith({
    node: {
      health: () => {
        throw new Error("table gone");
      },
    },
    relay: { health: () => ({ ok: false, problems: [] }) },
  });
  const res = await app.request("/healthz");
  assert.equal(res.status, 503);
  assert.equal(
    await res.text(),
    "node: health check failed: table gone\nrelay: not healthy (no detail given)\n",
  );
});

Deno.test("GET /healthz?role=scheduler asks the scheduler only; a role asked for that does not run fails", async () => {
  const sick = (): RoleHealth => ({ ok: false, problems: ["session lecture: failed"] });
  const app = appWith({ scheduler: { health: ok }, node: { health: sick } });
  assert.equal((await app.request("/healthz")).status, 503);
  const scoped = await app.request("/healthz?role=scheduler");
  assert.equal(scoped.status, 200, "the node's trouble does not move the scheduler's VIP");
  const missing = await app.request("/healthz?role=scheduler,relay");
  assert.equal(missing.status, 503);
  assert.equal(await missing.text(), "relay: not running\n");
});

Deno.test("GET /healthz fails while the process is stopping, whatever role it asks for", async () => {
  let stopping = false;
  const app = appWith({ scheduler: { health: ok } }, () => stopping);
  assert.equal((await app.request("/healthz?role=scheduler")).status, 200);
  stopping = true;
  const res = await app.request("/healthz?role=scheduler");
  assert.equal(res.status, 503);
  assert.equal(await res.text(), "edgenode: stopping\n");
});

Deno.test("GET /healthz?level=listening leaves out what only degrades a role", async () => {
  const degraded = (): RoleHealth => ({
    ok: true,
    problems: [],
    degraded: ["service web: no healthy server"],
  });
  const app = appWith({ scheduler: { health: degraded } });
  const full = await app.request("/healthz?role=scheduler");
  assert.equal(full.status, 503);
  assert.equal(await full.text(), "scheduler: service web: no healthy server\n");
  assert.equal((await app.request("/healthz?role=scheduler&level=listening")).status, 200);
  const down = appWith({
    scheduler: { health: () => ({ ok: false, problems: ["service web: not listening"] }) },
  });
  assert.equal((await down.request("/healthz?level=listening")).status, 503);
});
