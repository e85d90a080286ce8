/**
 * startAppliance with fake roles, a manual clock, an array log sink and a fake listener: start order, stop order,
 * clean-up after a failed start, the drain deadline, and the status app it serves. No sockets.
 */
import assert from "node:assert/strict";
import { type Appliance, type ApplianceDeps, startAppliance } from "../lib/appliance.ts";
import { loadConfig } from "../lib/config/load.ts";
import { applyOverrides, type Plan } from "../lib/config/plan.ts";
import { opt, section, str } from "../lib/config/schema.ts";
import { ManualClock } from "../lib/core/clock.ts";
import { StartError } from "../lib/core/errors.ts";
import { Logger } from "../lib/core/logger.ts";
import { Registry } from "../lib/core/registry.ts";
import type { HostPort } from "../lib/net/address.ts";
import type { Handler, HttpServer } from "../lib/net/http.ts";
import type { RoleDef, RunningRole } from "../lib/roles/role.ts";
import { VERSION } from "../lib/version.ts";
import { until } from "./_support/until.ts";

interface FakeRoleOptions {
  /** Start throws this instead of starting. */
  readonly startError?: Error;
  /** Stop throws this after recording itself. */
  readonly stopError?: Error;
  /** Stop waits until its deadline aborts. */
  readonly drains?: boolean;
  /** prepareReload throws this. */
  readonly prepareError?: Error;
  /** commit throws this. */
  readonly commitError?: Error;
  /** prepareReload waits for this first. */
  readonly prepareGate?: Promise<void>;
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
      let said = greeting;
      return Promise.resolve({
        status: () => ({ state: "running", greeting: said, node: ctx.nodeName }),
        prepareReload(next) {
          rec.events.push(`prepare ${name}`);
          if (options.prepareError) return Promise.reject(options.prepareError);
          const to = (next as { greeting: string }).greeting;
          return (options.prepareGate ?? Promise.resolve()).then(() => ({
            summary: {
              added: [],
              removed: [],
              changed: to === said ? [] : [`greeting ${to}`],
              replaced: [],
              notes: [],
            },
            commit() {
              rec.events.push(`commit ${name}`);
              if (options.commitError) throw options.commitError;
              said = to;
              return Promise.resolve();
            },
            abort() {
              rec.events.push(`abort ${name}`);
              return Promise.resolve();
            },
          }));
        },
        health: () =>
          said === "sick" ? { ok: false, problems: [`${name} is sick`] } : { ok: true, problems: [] },
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

async function request(rec: Recorder, path: string, method = "GET", token?: string): Promise<Response> {
  assert.ok(rec.handler, "the status app was never served");
  const headers = token ? { authorization: `Bearer ${token}` } : undefined;
  const info = {
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
    completed: Promise.resolve(),
  } as Deno.ServeHandlerInfo<Deno.NetAddr>;
  return await rec.handler(new Request(`http://status.test${path}`, { method, headers }), info);
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

Deno.test("startAppliance stops every role in reverse when listen throws, naming status.listen", async () => {
  const listenError = new StartError("Cannot listen on 127.0.0.1:8080: address already in use");
  const { rec, plan, deps } = setup("roles: [all]\n", { listenError });

  await assert.rejects(startAppliance(plan, deps), (error) => {
    assert.ok(error instanceof StartError);
    // The config does not write status.listen (the default): the key is named, with no position.
    assert.equal(error.message, `status.listen: status API: ${listenError.message}`);
    return true;
  });
  assert.deepEqual(rec.events, ["start a", "start b", "start c", "listen", "stop c", "stop b", "stop a"]);
  assert.ok(!rec.logs.some((l) => l.includes("msg=listening")));
});

Deno.test("a start error of a part the config names carries the config's file:line:col", async () => {
  const failure = new StartError("Cannot listen on udp 127.0.0.1:9: address already in use", {
    configPath: "b.greeting",
  });
  const { plan, deps } = setup("roles: [a, b]\nb:\n  greeting: hi\n", {
    roles: { b: { startError: failure } },
  });
  await assert.rejects(startAppliance(plan, deps), (error: unknown) => {
    assert.ok(error instanceof StartError);
    assert.equal(error.message, `test.yaml:3:13: b.greeting: ${failure.message}`);
    assert.equal(error.cause, failure);
    return true;
  });
});

Deno.test("a status address given on the command line is blamed on --status, not on the config", async () => {
  const listenError = new StartError("Cannot listen on 127.0.0.1:9: address already in use");
  const env = setup("roles: [a]\nstatus:\n  listen: 127.0.0.1:8080\n", { listenError });
  const plan = applyOverrides(env.plan, { status: { host: "127.0.0.1", port: 9 } }, env.roles);
  await assert.rejects(startAppliance(plan, env.deps), {
    name: "StartError",
    message: `command line --status: status API: ${listenError.message}`,
  });
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
  assert.deepEqual(body.process.scheduling, { policy: "fifo", priority: 10, threads: 9 });
  await appliance.stop();
});

Deno.test("startAppliance stays at the normal policy by default and says so in /status", async () => {
  const { rec, plan, deps } = setup("roles: [a]\n");
  const appliance = await startAppliance(plan, {
    ...deps,
    runRealtime: () => assert.fail("no real-time priority was asked for"),
  });
  const body = await (await request(rec, "/status")).json();
  assert.deepEqual(body.process.scheduling, { policy: "other", priority: 0 });
  assert.deepEqual(body.process.config, { source: "test.yaml", generation: 1, last_reload: null });
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

/** An appliance whose config text the test changes, reloaded through `reread` as main does. */
async function reloadable(first: string, options: Parameters<typeof setup>[1] = {}) {
  const env = setup(first, options);
  const file = { text: first };
  const appliance = await startAppliance(env.plan, {
    ...env.deps,
    reread: () => Promise.resolve(loadConfig(file.text, { file: "test.yaml", roles: env.roles })),
  });
  return { ...env, file, appliance };
}

Deno.test("a reload asks every role to prepare, then commits them all; /status says what changed", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a, b]\n");
  file.text = "roles: [a, b]\nb:\n  greeting: changed\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, true, outcome.errors.join("\n"));
  assert.equal(outcome.generation, 2);
  assert.deepEqual(outcome.roles, {
    b: { added: [], removed: [], changed: ["greeting changed"], replaced: [], notes: [] },
  });
  // a is asked too (a file it names may have changed) and finds nothing to do.
  assert.deepEqual(rec.events.slice(-4), ["prepare a", "prepare b", "commit a", "commit b"]);
  const body = await (await request(rec, "/status")).json();
  assert.equal(body.roles.b.greeting, "changed");
  assert.equal(body.process.config.generation, 2);
  assert.equal(body.process.config.last_reload.trigger, "test");
  assert.ok(rec.logs.some((l) => /msg=reloaded trigger=test generation=2/.test(l)), rec.logs.join("\n"));
  await appliance.stop();
});

Deno.test("a reload of a config with errors changes nothing and reports every error at its place", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a, b]\n");
  const before = rec.events.length;
  file.text = "roles: [a, b]\nb:\n  greeting: 7\nshutdown:\n  drain_timeout: forever\n";
  const outcome = await appliance.reload("SIGHUP");
  assert.equal(outcome.ok, false);
  assert.equal(outcome.generation, 1);
  assert.equal(outcome.errors.length, 2, outcome.errors.join("\n"));
  assert.match(outcome.errors[0], /^test\.yaml:3:13: /);
  assert.match(outcome.errors[1], /^test\.yaml:5:18: /);
  assert.deepEqual(rec.events.slice(before), [], "no role was asked to change");
  const body = await (await request(rec, "/status")).json();
  assert.equal(body.roles.b.greeting, "hello from b");
  assert.equal(body.process.config.last_reload.ok, false);
  assert.deepEqual(body.process.config.last_reload.errors, outcome.errors);
  assert.ok(rec.logs.some((l) => l.includes("reload refused; nothing changed")));
  await appliance.stop();
});

Deno.test("a reload whose second role cannot prepare aborts the first: nothing is half-applied", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a, b]\n", {
    roles: { b: { prepareError: new StartError("Cannot bind 127.0.0.1:9: address in use") } },
  });
  file.text = "roles: [a, b]\na:\n  greeting: new a\nb:\n  greeting: new b\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, false);
  assert.deepEqual(outcome.errors, ["Cannot bind 127.0.0.1:9: address in use"]);
  assert.deepEqual(rec.events.slice(-3), ["prepare a", "prepare b", "abort a"]);
  const body = await (await request(rec, "/status")).json();
  assert.equal(body.roles.a.greeting, "hello from a");
  await appliance.stop();
});

Deno.test("a reload's bind error names the place in the new config that asks for the address", async () => {
  const { file, appliance } = await reloadable("roles: [a, b]\n", {
    roles: {
      b: {
        prepareError: new StartError("Cannot bind 127.0.0.1:9: address in use", { configPath: "b.greeting" }),
      },
    },
  });
  file.text = "roles: [a, b]\n\nb:\n    greeting: new b\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, false);
  assert.deepEqual(outcome.errors, ["test.yaml:4:15: b.greeting: Cannot bind 127.0.0.1:9: address in use"]);
  await appliance.stop();
});

Deno.test("a reload starts a role added to the config and stops one taken out", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a]\n");
  file.text = "roles: [a, c]\n";
  assert.deepEqual((await appliance.reload("test")).roles, { c: "started" });
  file.text = "roles: [c]\n";
  assert.deepEqual((await appliance.reload("test")).roles, { a: "stopped" });
  assert.deepEqual(rec.events.slice(-6), [
    "prepare a",
    "start c",
    "commit a",
    "prepare c",
    "commit c",
    "stop a",
  ]);
  const body = await (await request(rec, "/status")).json();
  assert.deepEqual(Object.keys(body.roles), ["c"]);
  assert.deepEqual(await appliance.stop(), [{ name: "status" }, { name: "c" }]);
});

Deno.test("POST /reload needs the token and answers with what the reload did", async () => {
  const token = "reload-token-0123456789";
  const { rec, file, appliance } = await reloadable(`roles: [a]\nstatus:\n  token: ${token}\n`);
  file.text = `roles: [a]\nstatus:\n  token: ${token}\na:\n  greeting: via api\n`;
  assert.equal((await request(rec, "/reload", "POST")).status, 401);
  assert.equal(rec.events.includes("prepare a"), false);
  const answer = await request(rec, "/reload", "POST", token);
  assert.equal(answer.status, 200);
  const outcome = await answer.json();
  assert.equal(outcome.ok, true);
  assert.equal(outcome.trigger, "api");
  file.text = "roles: [a]\nstatus:\n  token: short\n";
  const refused = await request(rec, "/reload", "POST", token);
  assert.equal(refused.status, 400);
  assert.match((await refused.json()).errors[0], /^test\.yaml:3:10: /);
  await appliance.stop();
});

Deno.test("reloads run one at a time, and none after stop has begun", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a]\n");
  file.text = "roles: [a]\na:\n  greeting: one\n";
  const first = appliance.reload("one");
  const second = appliance.reload("two");
  assert.equal((await first).generation, 2);
  const again = await second;
  assert.equal(again.ok, true);
  assert.deepEqual(again.roles, {}, "the second found nothing left to change");
  assert.equal(again.generation, 3);
  assert.deepEqual(rec.events.filter((e) => e.startsWith("prepare") || e.startsWith("commit")), [
    "prepare a",
    "commit a",
    "prepare a",
    "commit a",
  ], "the second began after the first was applied");
  await appliance.stop();
  const late = await appliance.reload("late");
  assert.equal(late.ok, false);
  assert.deepEqual(late.errors, ["Stopping: nothing reloaded"]);
});

Deno.test("a reload that moves the status address binds the new one first and closes the old one after", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a]\nstatus:\n  listen: 127.0.0.1:8081\n");
  file.text = "roles: [a]\nstatus:\n  listen: 127.0.0.1:8082\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, true);
  assert.deepEqual(rec.events.slice(-4), ["prepare a", "listen", "commit a", "stop status"]);
  assert.deepEqual(appliance.statusAddr, { host: "127.0.0.1", port: 8082 });
  assert.deepEqual(outcome.roles.status, {
    added: [],
    removed: [],
    changed: ["status.listen 127.0.0.1:8081 -> 127.0.0.1:8082"],
    replaced: [],
    notes: [],
  });
  await appliance.stop();
});

Deno.test("a reload whose added role cannot start stops nothing that ran and changes nothing", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a]\n", {
    roles: { c: { startError: new StartError("Cannot bind 127.0.0.1:9: address in use") } },
  });
  file.text = "roles: [a, c]\na:\n  greeting: new a\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, false);
  assert.deepEqual(outcome.errors, ["Cannot bind 127.0.0.1:9: address in use"]);
  assert.deepEqual(rec.events.slice(-3), ["prepare a", "start c", "abort a"]);
  const body = await (await request(rec, "/status")).json();
  assert.deepEqual(Object.keys(body.roles), ["a"]);
  assert.equal(body.roles.a.greeting, "hello from a");
  await appliance.stop();
});

Deno.test("a stop that comes during a reload waits for it, then stops what the reload left running", async () => {
  const gate = Promise.withResolvers<void>();
  const { rec, file, appliance } = await reloadable("roles: [a]\n", {
    roles: { a: { prepareGate: gate.promise } },
  });
  file.text = "roles: [a, b]\na:\n  greeting: new\n";
  const reloading = appliance.reload("test");
  await until("a's prepare to begin", () => rec.events.includes("prepare a"));
  const stopping = appliance.stop();
  gate.resolve();
  const outcome = await reloading;
  assert.equal(outcome.ok, false);
  assert.deepEqual(outcome.errors, ["Stopping: nothing reloaded"]);
  assert.deepEqual(await stopping, [{ name: "status" }, { name: "a" }]);
  assert.deepEqual(
    rec.events.slice(-6),
    ["prepare a", "start b", "abort a", "stop b", "stop status", "stop a"],
  );
});

Deno.test("a commit that throws is reported; the other roles' changes still apply", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a, b]\n", {
    roles: { a: { commitError: new Error("metrics clash") } },
  });
  file.text = "roles: [a, b]\na:\n  greeting: x\nb:\n  greeting: y\n";
  const outcome = await appliance.reload("test");
  assert.equal(outcome.ok, false);
  assert.deepEqual(outcome.errors, ["a: the change could not be applied in full: metrics clash"]);
  assert.equal(outcome.generation, 2, "b's change is in: this is a new generation");
  const body = await (await request(rec, "/status")).json();
  assert.equal(body.roles.b.greeting, "y");
  assert.ok(rec.logs.some((l) => l.includes('msg="reload commit failed" part=a')));
  await appliance.stop();
});

Deno.test("a part that cannot bind at commit is reported at its place in the new config", async () => {
  const { file, appliance } = await reloadable("roles: [a]\n", {
    roles: {
      a: {
        commitError: new StartError("Cannot start relay r after the reload: cannot bind: in use", {
          configPath: "a.greeting",
        }),
      },
    },
  });
  file.text = "roles: [a]\na:\n  greeting: x\n";
  const outcome = await appliance.reload("test");
  assert.deepEqual(outcome.errors, [
    "a: the change could not be applied in full: test.yaml:3:13: a.greeting: " +
    "Cannot start relay r after the reload: cannot bind: in use",
  ]);
  await appliance.stop();
});

Deno.test("GET /healthz of the appliance asks every running role, also after a reload", async () => {
  const { rec, file, appliance } = await reloadable("roles: [a]\n");
  assert.equal((await request(rec, "/healthz")).status, 200);
  file.text = "roles: [a]\na:\n  greeting: sick\n";
  await appliance.reload("test");
  const sick = await request(rec, "/healthz");
  assert.equal(sick.status, 503);
  assert.match(await sick.text(), /a is sick/);
  await appliance.stop();
});

Deno.test("with a health grace, a stop fails /healthz first and stops the roles only when the grace has passed", async () => {
  const { rec, clock, plan, deps } = setup("roles: [a]\nshutdown:\n  health_grace: 3s\n");
  const appliance = await startAppliance(plan, deps);
  assert.equal((await request(rec, "/healthz")).status, 200);
  const stopping = appliance.stop();
  await until("the grace to begin", () => rec.logs.some((l) => l.includes("health fails first")));
  const res = await request(rec, "/healthz");
  assert.equal(res.status, 503);
  assert.equal(await res.text(), "edgenode: stopping\n");
  clock.advance(2_999);
  assert.ok(!rec.events.includes("stop a"), "everything still serves during the grace");
  clock.advance(1);
  assert.deepEqual(await stopping, [{ name: "status" }, { name: "a" }]);
  assert.equal(clock.pending, 0);
});
