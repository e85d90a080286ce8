/**
 * startAppliance with fake roles, a manual clock, an array log sink and a fake listener: start order, stop order,
 * clean-up after a failed start, the drain deadline, and the status app it serves. No sockets.
 */
import assert from "node:assert/strict";
import { type Appliance, type ApplianceDeps, startAppliance } from "../lib/appliance.ts";
import { loadConfig } from "../lib/config/load.ts";
import type { Plan } from "../lib/config/plan.ts";
import { opt, section, str } from "../lib/config/schema.ts";
import { ManualClock } from "../lib/core/clock.ts";
import { StartError } from "../lib/core/errors.ts";
import { Logger } from "../lib/core/logger.ts";
import { Registry } from "../lib/core/registry.ts";
import type { HostPort } from "../lib/net/address.ts";
import type { Handler, HttpServer } from "../lib/net/http.ts";
import type { RoleDef, RunningRole } from "../lib/roles/role.ts";
import { VERSION } from "../lib/version.ts";

interface FakeRoleOptions {
  /** Start throws this instead of starting. */
  readonly startError?: Error;
  /** Stop throws this after recording itself. */
  readonly stopError?: Error;
  /** Stop waits until its deadline aborts. */
  readonly drains?: boolean;
}

/** Everything the fakes saw, in order. */
class Recorder {
  readonly events: string[] = [];
  readonly logs: string[] = [];
  /** The deadline each role's stop was given, by role name. */
  readonly deadlines = new Map<string, AbortSignal>();
  readonly #stopEntered = new Map<string, PromiseWithResolvers<void>>();
  handler?: Handler;
  listenedOn?: HostPort;

  /** Settles once role `name` has begun to stop. */
  stopEnteredBy(name: string): Promise<void> {
    return this.#entered(name).promise;
  }

  markStopEntered(name: string): void {
    this.#entered(name).resolve();
  }

  #entered(name: string): PromiseWithResolvers<void> {
    let entered = this.#stopEntered.get(name);
    if (!entered) this.#stopEntered.set(name, entered = Promise.withResolvers<void>());
    return entered;
  }
}

function fakeRole(name: string, rec: Recorder, options: FakeRoleOptions = {}): RoleDef {
  return {
    name,
    description: `fake ${name}`,
    needsPeer: false,
    section: section({ greeting: opt(str(), `hello from ${name}`) }),
    start(checked, ctx): Promise<RunningRole> {
      rec.events.push(`start ${name}`);
      if (options.startError) return Promise.reject(options.startError);
      const { greeting } = checked as { greeting: string };
      ctx.logger.info("started");
      return Promise.resolve({
        status: () => ({ state: "running", greeting, node: ctx.nodeName }),
        async stop(deadline) {
          rec.events.push(`stop ${name}`);
          rec.deadlines.set(name, deadline);
          rec.markStopEntered(name);
          if (options.drains && !deadline.aborted) {
            await new Promise((resolve) => deadline.addEventListener("abort", resolve, { once: true }));
            rec.events.push(`drained ${name}`);
          }
          if (options.stopError) throw options.stopError;
        },
      });
    },
  };
}

function fakeListen(rec: Recorder, failure?: Error): NonNullable<ApplianceDeps["listen"]> {
  return function listen(handler, addr): HttpServer {
    rec.events.push("listen");
    if (failure) throw failure;
    rec.handler = handler;
    rec.listenedOn = addr;
    return {
      addr: { host: addr.host, port: addr.port === 0 ? 40_000 : addr.port },
      stop() {
        rec.events.push("stop status");
        return Promise.resolve();
      },
    };
  };
}

interface Setup {
  readonly rec: Recorder;
  readonly clock: ManualClock;
  readonly roles: Registry<RoleDef>;
  readonly plan: Plan;
  readonly deps: ApplianceDeps;
}

/** Roles a, b, c (registry order) with per-role options, a plan from `config`, and deps around fakes. */
function setup(
  config: string,
  options: { roles?: Record<string, FakeRoleOptions>; listenError?: Error } = {},
): Setup {
  const rec = new Recorder();
  const clock = new ManualClock(Date.UTC(2025, 0, 1));
  const roles = new Registry<RoleDef>(
    "role",
    ["a", "b", "c"].map((n) => fakeRole(n, rec, options.roles?.[n])),
  );
  const plan = loadConfig(config, { file: "test.yaml", roles });
  const logger = new Logger({ level: "debug", clock, sink: (line) => rec.logs.push(line) });
  const deps: ApplianceDeps = {
    clock,
    logger,
    roles,
    hostname: () => "fake-host",
    listen: fakeListen(rec, options.listenError),
  };
  return { rec, clock, roles, plan, deps };
}

async function request(rec: Recorder, path: string): Promise<Response> {
  assert.ok(rec.handler, "the status app was never served");
  return await rec.handler(new Request(`http://status.test${path}`));
}

Deno.test("startAppliance starts roles in plan order, then listens; stop goes in reverse", async () => {
  // The config lists c before a; the plan (and so the start order) follows the registry.
  const { rec, plan, deps } = setup("roles: [c, a]\nstatus:\n  listen: 127.0.0.1:0\n");
  assert.deepEqual(plan.roles, ["a", "c"]);

  const appliance = await startAppliance(plan, deps);
  assert.deepEqual(rec.events, ["start a", "start c", "listen"]);
  assert.deepEqual(rec.listenedOn, { host: "127.0.0.1", port: 0 });
  assert.deepEqual(appliance.statusAddr, { host: "127.0.0.1", port: 40_000 });
  assert.ok(rec.logs.some((l) => / component=status msg=listening addr=127\.0\.0\.1:40000$/.test(l)));

  const results = await appliance.stop();
  assert.deepEqual(results, [{ name: "status" }, { name: "c" }, { name: "a" }]);
  assert.deepEqual(rec.events.slice(3), ["stop status", "stop c", "stop a"]);
});

Deno.test("Appliance.stop returns the same results when called twice and stops each part once", async () => {
  const { rec, plan, deps } = setup("roles: [a, b]\n");
  const appliance = await startAppliance(plan, deps);
  const [first, second] = await Promise.all([appliance.stop(), appliance.stop()]);
  assert.deepEqual(first, second);
  assert.deepEqual(rec.events.filter((e) => e.startsWith("stop")), ["stop status", "stop b", "stop a"]);
});

Deno.test("startAppliance stops the roles started before one that fails, in reverse, and throws StartError", async () => {
  const { rec, plan, deps } = setup("roles: [all]\n", {
    roles: { c: { startError: new Error("Cannot bind 10.0.0.1:5000: address not available") } },
  });

  await assert.rejects(startAppliance(plan, deps), StartError);
  assert.deepEqual(rec.events, ["start a", "start b", "start c", "stop b", "stop a"]);
  assert.equal(rec.handler, undefined, "nothing listens after a failed start");
});

Deno.test("startAppliance keeps the message and cause of a role's start error", async () => {
  const cause = new Error("Cannot bind 10.0.0.1:5000: address not available");
  const { plan, deps } = setup("roles: [a, b]\n", { roles: { b: { startError: cause } } });
  await assert.rejects(startAppliance(plan, deps), (error: unknown) => {
    assert.ok(error instanceof StartError);
    assert.equal(error.message, cause.message);
    assert.equal(error.cause, cause);
    return true;
  });
});

Deno.test("startAppliance logs a role that fails to stop during clean-up and still stops the others", async () => {
  const { rec, plan, deps } = setup("roles: [all]\n", {
    roles: { b: { stopError: new Error("socket stuck") }, c: { startError: new StartError("c failed") } },
  });
  await assert.rejects(startAppliance(plan, deps), { name: "StartError", message: "c failed" });
  assert.deepEqual(rec.events, ["start a", "start b", "start c", "stop b", "stop a"]);
  assert.ok(
    rec.logs.some((l) =>
      / level=error component=main msg="stop failed" part=b error="Error: socket stuck"$/.test(l)
    ),
    rec.logs.join("\n"),
  );
});

Deno.test("startAppliance stops every role in reverse when listen throws, rethrowing its StartError", async () => {
  const listenError = new StartError("Cannot listen on 127.0.0.1:8080: address already in use");
  const { rec, plan, deps } = setup("roles: [all]\n", { listenError });

  await assert.rejects(startAppliance(plan, deps), (error) => error === listenError);
  assert.deepEqual(rec.events, ["start a", "start b", "start c", "listen", "stop c", "stop b", "stop a"]);
  assert.ok(!rec.logs.some((l) => l.includes("msg=listening")));
});

Deno.test("Appliance.stop gives every part the plan's drain deadline on the clock", async () => {
  const { rec, clock, plan, deps } = setup("roles: [a, b]\nshutdown:\n  drain_timeout: 5s\n", {
    roles: { b: { drains: true } },
  });
  const appliance = await startAppliance(plan, deps);
  const stopping = appliance.stop();
  await rec.stopEnteredBy("b");

  clock.advance(4_999);
  assert.equal(rec.deadlines.get("b")!.aborted, false);
  assert.ok(!rec.events.includes("stop a"), "a waits for b to drain");
  clock.advance(1);
  assert.equal(rec.deadlines.get("b")!.aborted, true);

  assert.deepEqual(await stopping, [{ name: "status" }, { name: "b" }, { name: "a" }]);
  assert.deepEqual(rec.events.slice(-3), ["stop b", "drained b", "stop a"]);
  assert.equal(rec.deadlines.get("a"), rec.deadlines.get("b"), "one deadline shared by every part");
  assert.equal(clock.pending, 0, "no timer left behind");
});

Deno.test("Appliance.stop cuts the drain short when force aborts", async () => {
  const { rec, clock, plan, deps } = setup("roles: [a]\nshutdown:\n  drain_timeout: 10m\n", {
    roles: { a: { drains: true } },
  });
  const appliance = await startAppliance(plan, deps);
  const force = new AbortController();
  const stopping = appliance.stop(force.signal);
  await rec.stopEnteredBy("a");
  force.abort(new Error("Second SIGTERM"));
  assert.deepEqual(await stopping, [{ name: "status" }, { name: "a" }]);
  assert.deepEqual(rec.events.slice(-2), ["stop a", "drained a"]);
  assert.equal(clock.pending, 0);
});

Deno.test("the status app served by startAppliance answers /status with each role's status", async () => {
  const { rec, clock, plan, deps } = setup(
    "roles: [a, c]\nc:\n  greeting: hi there\n",
  );
  const appliance: Appliance = await startAppliance(plan, deps);
  assert.equal(appliance.name, "fake-host", "no name in the plan: the host name");
  clock.advance(2_500);

  const response = await request(rec, "/status");
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(body.name, "fake-host");
  assert.equal(body.version, VERSION);
  assert.equal(body.uptime_seconds, 2.5);
  assert.equal(body.log_level, "debug");
  assert.deepEqual(body.roles, {
    a: { state: "running", greeting: "hello from a", node: "fake-host" },
    c: { state: "running", greeting: "hi there", node: "fake-host" },
  });

  const metrics = await (await request(rec, "/metrics")).text();
  assert.match(
    metrics,
    new RegExp(`^edgenode_build_info\\{name="fake-host",version="${VERSION}"\\} 1$`, "m"),
  );
  assert.match(metrics, /^edgenode_process_uptime_seconds 2\.5$/m);
  await appliance.stop();
});

Deno.test("startAppliance names the node from the plan when it has a name", async () => {
  const { rec, plan, deps } = setup("name: edge-7\nroles: [b]\n");
  const appliance = await startAppliance(plan, deps);
  assert.equal(appliance.name, "edge-7");
  const body = await (await request(rec, "/status")).json();
  assert.equal(body.name, "edge-7");
  assert.deepEqual(Object.keys(body.roles), ["b"]);
  await appliance.stop();
});

Deno.test("startAppliance puts the process at the configured real-time priority before any role starts", async () => {
  const { rec, plan, deps } = setup("roles: [a]\nprocess:\n  realtime_priority: 10\n");
  const appliance = await startAppliance(plan, {
    ...deps,
    runRealtime: (priority) => {
      rec.events.push(`realtime ${priority}`);
      return 9;
    },
  });
  assert.deepEqual(rec.events.slice(0, 2), ["realtime 10", "start a"]);
  const body = await (await request(rec, "/status")).json();
  assert.deepEqual(body.process, { scheduling: { policy: "fifo", priority: 10, threads: 9 } });
  await appliance.stop();
});

Deno.test("startAppliance stays at the normal policy by default and says so in /status", async () => {
  const { rec, plan, deps } = setup("roles: [a]\n");
  const appliance = await startAppliance(plan, {
    ...deps,
    runRealtime: () => assert.fail("no real-time priority was asked for"),
  });
  const body = await (await request(rec, "/status")).json();
  assert.deepEqual(body.process, { scheduling: { policy: "other", priority: 0 } });
  await appliance.stop();
});

Deno.test("startAppliance refuses to start when the real-time priority cannot be set, naming the key", async () => {
  const { rec, plan, deps } = setup("roles: [a]\nprocess:\n  realtime_priority: 10\n");
  await assert.rejects(
    startAppliance(plan, {
      ...deps,
      runRealtime: () => {
        throw new Error("Cannot run at real-time priority 10: not permitted (it needs root or CAP_SYS_NICE)");
      },
    }),
    (error) =>
      error instanceof StartError &&
      error.message ===
        "test.yaml: process.realtime_priority: Cannot run at real-time priority 10: not permitted (it needs root or CAP_SYS_NICE)",
  );
  assert.ok(!rec.events.includes("start a"), "no role started");
});
