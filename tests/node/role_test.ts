/**
 * The node role's session API through `app.request()`: upload (language or YAML) and start, list, stop; a bad
 * program is refused with every error and its place, and nothing is started; mutations need the token.
 */
import assert from "node:assert/strict";
import { roleApp } from "../api/_role_app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { Registry } from "../../lib/core/registry.ts";
import { defineElement, type ElementKind } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { defineNodeRole, nodeRole } from "../../lib/node/role.ts";
import { within } from "../_support/until.ts";
import { countingProgram } from "../_support/programs.ts";

const TOKEN = "node-token-0123456789";
const auth = { authorization: `Bearer ${TOKEN}` };

async function setup(extra: Record<string, unknown> = {}) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "warn", clock, sink: () => {} });
  const metrics = new MetricsRegistry();
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_node_" });
  const defaults = nodeRole.section.default as Record<string, unknown>;
  const role = await nodeRole.start(
    { ...defaults, bind: "127.0.0.1", data_dir: dataDir, ...extra } as never,
    { nodeName: "n", logger, metrics, clock },
  ).catch(async (error) => {
    await Deno.remove(dataDir, { recursive: true });
    throw error;
  });
  const app = roleApp("node", role, { clock, metrics, logger, token: TOKEN });
  return {
    app,
    role,
    metrics,
    dataDir,
    async [Symbol.asyncDispose]() {
      await role.stop(new AbortController().signal);
      await Deno.remove(dataDir, { recursive: true });
    },
  };
}

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

Deno.test("node session API starts, lists and stops an uploaded program", async () => {
  await using env = await setup();
  const port = freePort();
  const up = await env.app.request("/node/sessions", {
    method: "POST",
    body: countingProgram("demo", port),
    headers: auth,
  });
  const body = await up.json();
  assert.equal(up.status, 201, JSON.stringify(body));
  assert.equal(body.started, "demo");
  assert.equal(body.persisted, false);
  assert.deepEqual(body.ports, [port]);

  const list = await (await env.app.request("/node/sessions")).json();
  assert.deepEqual(list.map((s: { name: string }) => s.name), ["demo"]);
  const status = await (await env.app.request("/status")).json();
  assert.deepEqual(Object.keys(status.roles.node.sessions), ["demo"]);
  assert.match(env.metrics.render(), /edgenode_session_ap_in_packets_total\{session="demo",ap="In"/);

  const again = await env.app.request("/node/sessions", {
    method: "POST",
    body: countingProgram("demo", port + 1),
    headers: auth,
  });
  assert.equal(again.status, 409);
  assert.match((await again.json()).error, /already running/);

  const del = await env.app.request("/node/sessions/demo", { method: "DELETE", headers: auth });
  assert.equal(del.status, 200);
  assert.equal((await del.json()).stopped, "demo");
  assert.equal((await env.app.request("/node/sessions/demo")).status, 404);
  assert.doesNotMatch(env.metrics.render(), /session="demo"/);
});

Deno.test("node session API refuses a bad program with every error and starts nothing", async () => {
  await using env = await setup();
  const bad = `Project broken;
{ AP name="A" ref=localservice.forwarder;
    inputs = in(DIPRONN_INPUT(${freePort()}));
    outputs = out(Nobody.in);
}
{ AP name="B" ref=localservice.sorter;
    inputs = in;
}
`;
  const res = await env.app.request("/node/sessions?file=broken.dipronn", {
    method: "POST",
    body: bad,
    headers: auth,
  });
  assert.equal(res.status, 400);
  const body = await res.json();
  assert.match(body.error, /nothing was started/);
  assert.deepEqual(
    body.errors.map((e: { text: string }) => e.text.replace(/ \(known: .*\)$/, "")),
    [
      'broken.dipronn:4:19: Unknown AP "Nobody" in A.out',
      'broken.dipronn:6:19: Unknown AP kind "localservice.sorter"',
    ],
  );
  assert.deepEqual(await (await env.app.request("/node/sessions")).json(), []);
});

Deno.test("node session API takes the YAML form and refuses a port another session holds", async () => {
  await using env = await setup();
  const port = freePort();
  const first = await env.app.request("/node/sessions", {
    method: "POST",
    body: countingProgram("one", port),
    headers: auth,
  });
  assert.equal(first.status, 201);
  await first.body?.cancel();
  const yaml = `project: two
aps:
  - name: In
    ref: localservice.forwarder
    inputs: in(DIPRONN_INPUT(${port}))
    outputs: out(Count.in)
  - {name: Count, ref: localservice.counter, inputs: in}
`;
  const res = await env.app.request("/node/sessions", {
    method: "POST",
    body: yaml,
    headers: { ...auth, "content-type": "application/yaml" },
  });
  assert.equal(res.status, 400);
  const [error] = (await res.json()).errors;
  assert.equal(error.line, 5);
  assert.match(error.message, new RegExp(`UDP port ${port} of In.in is already used by session one`));
});

Deno.test("node session API mutations need the token", async () => {
  await using env = await setup();
  const post = await env.app.request("/node/sessions", {
    method: "POST",
    body: countingProgram("x", freePort()),
  });
  assert.equal(post.status, 401);
  const del = await env.app.request("/node/sessions/x", { method: "DELETE" });
  assert.equal(del.status, 401);
});

Deno.test("node role without a cluster guards no path itself: POST /cluster/* needs the token", async () => {
  await using env = await setup();
  assert.deepEqual(env.role.selfGuarded, []);
  const res = await env.app.request("/cluster/sessions/x/stop", { method: "POST", body: "{}" });
  assert.equal(res.status, 401);
  assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="edgenode"');
});

Deno.test("node role starts the sessions named in its config, and refuses to start on a bad one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = `${dir}/good.dipronn`;
    await Deno.writeTextFile(good, countingProgram("boot", freePort()));
    {
      await using env = await setup({ sessions: [good] });
      assert.deepEqual(Object.keys(env.role.status().sessions as object), ["boot"]);
    }
    const bad = `${dir}/bad.dipronn`;
    await Deno.writeTextFile(bad, 'Project bad;\n{ AP name="A" ref=nope; }\n');
    await assert.rejects(
      setup({ sessions: [good, bad] }),
      /Session program .*bad\.dipronn has errors:\n.*bad\.dipronn:2:19: Unknown AP kind "nope"/,
    );
    // The good session started before the bad one was stopped again: its port is free.
    const s = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: Number(/DIPRONN_INPUT\((\d+)\)/.exec(await Deno.readTextFile(good))![1]),
    });
    s.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node session API refuses a second session writing a file another session writes", async () => {
  await using env = await setup();
  const saving = (name: string) =>
    `Project ${name};
{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(${freePort()})); output_file = "rec.pcap"; overwrite = true; }
`;
  const first = await env.app.request("/node/sessions", {
    method: "POST",
    body: saving("one"),
    headers: auth,
  });
  assert.equal(first.status, 201);
  await first.body?.cancel();
  const second = await env.app.request("/node/sessions", {
    method: "POST",
    body: saving("two"),
    headers: auth,
  });
  assert.equal(second.status, 400);
  assert.deepEqual((await second.json()).errors.map((e: { text: string }) => e.text), [
    "<upload>:2:1: S uses file rec.pcap, which session one already uses",
  ]);
});

Deno.test("node session API: a session refused for a port in use leaves no saver file behind, keeps an earlier recording, and starts once the port is free", async () => {
  await using env = await setup();
  const busy = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const saving = (port: number, file: string, overwrite: boolean) =>
    `Project t.save;
{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(${port})); output_file = "${file}"; overwrite = ${overwrite}; }
`;
  const earlier = new Uint8Array(100).fill(7);
  await Deno.writeFile(`${env.dataDir}/kept.pcap`, earlier);
  try {
    for (const [file, overwrite] of [["t1.pcap", false], ["kept.pcap", true]] as const) {
      const refused = await env.app.request("/node/sessions", {
        method: "POST",
        body: saving((busy.addr as Deno.NetAddr).port, file, overwrite),
        headers: auth,
      });
      assert.equal(refused.status, 409);
      assert.match((await refused.json()).error, /address already in use.*nothing was left running$/);
    }
    await assert.rejects(Deno.stat(`${env.dataDir}/t1.pcap`), Deno.errors.NotFound);
    assert.deepEqual(
      await Deno.readFile(`${env.dataDir}/kept.pcap`),
      earlier,
      "the earlier recording is whole",
    );
    const retried = await env.app.request("/node/sessions", {
      method: "POST",
      body: saving(freePort(), "t1.pcap", false),
      headers: auth,
    });
    assert.equal(retried.status, 201, await retried.text());
  } finally {
    busy.close();
  }
});

Deno.test("node session API runs a VM group in a worker and refuses one that cannot start, leaving nothing", async () => {
  await using env = await setup();
  const [input, registration] = [freePort(), freePort()];
  const vmProgram = (name: string, reg: number) =>
    `Project ${name};
{ AP name="In" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(${input})); outputs = a(Count.in), b(Reflect.in); }
{ VM name="vm1" ref=vm1_image;
    { AP name="Count" ref=localservice.counter; inputs = in; }
    { AP name="Reflect" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(${reg})); outputs = out(DIPRONN_OUTPUT), }
}
`;
  const busy = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    const refused = await env.app.request("/node/sessions", {
      method: "POST",
      body: vmProgram("broken_vm", (busy.addr as Deno.NetAddr).port),
      headers: auth,
    });
    assert.equal(refused.status, 409);
    assert.match(
      (await refused.json()).error,
      /^Cannot start session broken_vm: Reflect \(<upload>:5:5\): .*\(in VM vm1\); nothing was left running$/,
    );
  } finally {
    busy.close();
  }
  assert.deepEqual(await (await env.app.request("/node/sessions")).json(), []);
  // The failed session's input port is free again: a session can take it.
  const ok = await env.app.request("/node/sessions", {
    method: "POST",
    body: vmProgram("good_vm", registration),
    headers: auth,
  });
  const body = await ok.json();
  assert.equal(ok.status, 201, JSON.stringify(body));
  assert.deepEqual(
    body.vms.map((v: { name: string; state: string; isolate: string }) => [v.name, v.state, v.isolate]),
    [["vm1", "running", "worker"]],
  );
  assert.deepEqual(
    body.aps.map((a: { name: string; vm: string | null }) => [a.name, a.vm]),
    [["In", null], ["Reflect", "vm1"], ["Count", "vm1"]],
  );
  const del = await env.app.request("/node/sessions/good_vm", { method: "DELETE", headers: auth });
  assert.equal(del.status, 200);
  await del.body?.cancel();
});

/** An AP kind whose stop never finishes (a worker that hangs, a file system that does not answer). */
const stuck = defineElement({
  name: "test.stuck",
  description: "Never finishes stopping",
  ports: { inputs: { min: 1, max: 1 }, outputs: { min: 0, max: 0 } },
  params: {},
  create: (ctx) => {
    // It holds something of the node's that would outlive the process (as the transcoders' ffmpeg would).
    ctx.node.shared?.set("test.child", child);
    return {
      push() {},
      stop: () => new Promise<void>(() => {}),
    };
  },
});
/** Stands for a child process: the node must end it at once when its stop passes the deadline. */
const child = {
  killed: 0,
  hardStop() {
    this.killed++;
  },
};

Deno.test("node role stops at the drain deadline (or a second signal) even when a session cannot stop", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_node_" });
  try {
    const role = defineNodeRole({
      elements: () =>
        new Registry<ElementKind>("AP kind", [...coreElements().values(), stuck as ElementKind]),
    });
    const defaults = role.section.default as Record<string, unknown>;
    const running = await role.start(
      {
        ...defaults,
        bind: "127.0.0.1",
        data_dir: dataDir,
      } as never,
      {
        nodeName: "n",
        logger: new Logger({ level: "warn", clock, sink: () => {} }),
        metrics: new MetricsRegistry(),
        clock,
      },
    );
    const app = roleApp("node", running, {
      clock,
      metrics: new MetricsRegistry(),
      logger: new Logger({ level: "warn", clock, sink: () => {} }),
      token: TOKEN,
    });
    for (const [name, ref] of [["ok", "localservice.counter"], ["hung", "test.stuck"]]) {
      const res = await app.request("/node/sessions", {
        method: "POST",
        headers: auth,
        body: `Project ${name};
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(S.in); }
{ AP name="S" ref=${ref}; inputs = in; }
`,
      });
      assert.equal(res.status, 201, await res.text());
    }
    const drain = new AbortController();
    const stopping = running.stop(drain.signal);
    const outcome = stopping.then(() => "stopped", (e: Error) => e.message);
    // The first session to stop (the last started) hangs: the deadline, not the session, ends the stop.
    drain.abort(new Error("Second SIGTERM"));
    assert.equal(await within(outcome, 5_000), true, "the stop ends at the deadline");
    assert.equal(
      await outcome,
      "Cannot stop every session within the drain deadline: 2 of 2 still stopping (not begun: ok); they end with the process",
    );
    assert.equal(child.killed, 1, "what would outlive the process was ended at once");
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
