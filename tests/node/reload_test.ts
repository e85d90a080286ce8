/**
 * Node role reload (RunningRole.prepareReload): boot sessions (node.sessions) are matched by file. The tests start
 * the role on real loopback ports, count datagrams into sessions, reload, and check what a user would notice: an
 * added program runs, a dropped one stops (its port is free), an unchanged one keeps counting where it was, a changed
 * one is replaced, sessions started over the API survive, and a reload with a bad or clashing program changes nothing.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { nodeRole } from "../../lib/node/role.ts";
import type { RunningRole } from "../../lib/roles/role.ts";
import { roleApp } from "../api/_role_app.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { until } from "../_support/until.ts";
import { countingProgram } from "../_support/programs.ts";

const TOKEN = "node-token-0123456789";
const auth = { authorization: `Bearer ${TOKEN}` };

async function setup() {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const lines: string[] = [];
  const logger = new Logger({ level: "info", clock, sink: (l) => lines.push(l) });
  const metrics = new MetricsRegistry();
  const dir = await Deno.makeTempDir({ prefix: "edgenode_reload_" });
  const defaults = nodeRole.section.default as Record<string, unknown>;
  const section = (sessions: string[], extra: Record<string, unknown> = {}) =>
    ({ ...defaults, bind: "127.0.0.1", data_dir: dir, sessions, ...extra }) as never;
  const file = async (name: string, text: string) => {
    const path = `${dir}/${name}.dipronn`;
    await Deno.writeTextFile(path, text);
    return path;
  };
  const sender = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  return {
    dir,
    lines,
    section,
    file,
    async start(sessions: string[]): Promise<{ role: RunningRole; app: ReturnType<typeof roleApp> }> {
      const role = await nodeRole.start(section(sessions), { nodeName: "n", logger, metrics, clock });
      return { role, app: roleApp("node", role, { clock, metrics, logger, token: TOKEN }) };
    },
    async send(port: number, n: number): Promise<void> {
      for (let i = 0; i < n; i++) {
        await sender.send(new Uint8Array([i]), { transport: "udp", hostname: "127.0.0.1", port });
      }
    },
    async [Symbol.asyncDispose]() {
      sender.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function counted(role: RunningRole, session: string): number | undefined {
  const sessions = role.status().sessions as Record<string, { aps: { counted?: { packets: number } }[] }>;
  return sessions[session]?.aps[1].counted?.packets;
}

function portFree(port: number): boolean {
  try {
    Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

Deno.test("node reload starts an added boot session, stops a removed one, replaces a changed one and keeps the rest with their counters", async () => {
  await using env = await setup();
  const [pKeep, pGone, pAdd, pOld, pNew, pApi] = Array.from({ length: 6 }, () => freeUdpPort());
  const keep = await env.file("keep", countingProgram("keep", pKeep));
  const gone = await env.file("gone", countingProgram("gone", pGone));
  const changes = await env.file("changes", countingProgram("changes", pOld));
  const { role, app } = await env.start([keep, gone, changes]);
  try {
    const up = await app.request("/node/sessions", {
      method: "POST",
      body: countingProgram("api", pApi),
      headers: auth,
    });
    assert.equal(up.status, 201);
    await up.body?.cancel();
    await env.send(pKeep, 5);
    await env.send(pApi, 3);
    await until("keep and api count", () => counted(role, "keep") === 5 && counted(role, "api") === 3);

    const add = await env.file("add", countingProgram("add", pAdd));
    await Deno.writeTextFile(changes, countingProgram("changes", pNew));
    const r = await role.prepareReload!(env.section([keep, changes, add], { max_sessions: 20 }));
    assert.deepEqual(r.summary.added, ["session add"]);
    assert.deepEqual(r.summary.removed, ["session gone"]);
    assert.deepEqual(r.summary.replaced, ["session changes"]);
    assert.deepEqual(r.summary.changed, []);
    assert.equal(r.summary.notes.length, 1);
    assert.match(r.summary.notes[0], /apply to sessions started from now on/);
    // Nothing changed before the commit.
    assert.deepEqual(Object.keys(role.status().sessions as object).sort(), [
      "api",
      "changes",
      "gone",
      "keep",
    ]);
    await r.commit(AbortSignal.timeout(10_000));

    assert.deepEqual(Object.keys(role.status().sessions as object).sort(), ["add", "api", "changes", "keep"]);
    assert.ok(portFree(pGone), "the removed session's port is free");
    assert.ok(portFree(pOld), "the replaced session's old port is free");
    await env.send(pKeep, 2);
    await env.send(pApi, 1);
    await env.send(pAdd, 4);
    await env.send(pNew, 6);
    await until(
      "every session counting",
      () =>
        counted(role, "keep") === 7 && counted(role, "api") === 4 && counted(role, "add") === 4 &&
        counted(role, "changes") === 6,
    );
    assert.equal(role.health!().ok, true);
    assert.equal((role.status() as { budgets: unknown }).budgets !== undefined, true);
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
  assert.deepEqual(env.lines.filter((l) => l.includes("level=error")), []);
});

Deno.test("node reload with a bad program or a port in use throws, and changes nothing", async () => {
  await using env = await setup();
  const [pKeep, pApi, pBad] = [freeUdpPort(), freeUdpPort(), freeUdpPort()];
  const keep = await env.file("keep", countingProgram("keep", pKeep));
  const { role, app } = await env.start([keep]);
  try {
    const up = await app.request("/node/sessions", {
      method: "POST",
      body: countingProgram("api", pApi),
      headers: auth,
    });
    assert.equal(up.status, 201);
    await up.body?.cancel();

    const broken = await env.file("broken", 'Project broken;\n{ AP name="A" ref=nope; }\n');
    await assert.rejects(
      role.prepareReload!(env.section([broken])),
      (error: Error) => {
        assert.ok(error instanceof StartError);
        assert.match(
          error.message,
          /^Session program .*broken\.dipronn has errors:\n.*broken\.dipronn:2:19: Unknown AP kind "nope"/,
        );
        return true;
      },
    );
    // A boot program that wants the API session's port.
    const clash = await env.file("clash", countingProgram("clash", pApi));
    await assert.rejects(role.prepareReload!(env.section([keep, clash])), StartError);
    // One whose file cannot be read.
    await assert.rejects(
      role.prepareReload!(env.section([`${env.dir}/missing.dipronn`])),
      /missing\.dipronn/,
    );

    assert.deepEqual(Object.keys(role.status().sessions as object).sort(), ["api", "keep"]);
    await env.send(pKeep, 2);
    await until("keep still counts", () => counted(role, "keep") === 2);
    assert.ok(portFree(pBad));
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload aborted after prepare leaves everything running and frees what it held", async () => {
  await using env = await setup();
  const [pKeep, pAdd] = [freeUdpPort(), freeUdpPort()];
  const keep = await env.file("keep", countingProgram("keep", pKeep));
  const { role, app } = await env.start([keep]);
  try {
    const add = await env.file("add", countingProgram("add", pAdd));
    const r = await role.prepareReload!(env.section([add]));
    assert.deepEqual(r.summary.added, ["session add"]);
    assert.deepEqual(r.summary.removed, ["session keep"]);
    // While held, an upload may not take the port the reload checked.
    const held = await app.request("/node/sessions", {
      method: "POST",
      body: countingProgram("other", pAdd),
      headers: auth,
    });
    assert.equal(held.status, 400);
    await held.body?.cancel();
    await r.abort();
    assert.deepEqual(Object.keys(role.status().sessions as object), ["keep"]);
    const up = await app.request("/node/sessions", {
      method: "POST",
      body: countingProgram("other", pAdd),
      headers: auth,
    });
    assert.equal(up.status, 201);
    await up.body?.cancel();
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload leaves a boot session stopped over the API stopped while its file is unchanged", async () => {
  await using env = await setup();
  const port = freeUdpPort();
  const keep = await env.file("keep", countingProgram("keep", port));
  const { role, app } = await env.start([keep]);
  try {
    const del = await app.request("/node/sessions/keep", { method: "DELETE", headers: auth });
    assert.equal(del.status, 200);
    await del.body?.cancel();
    const r = await role.prepareReload!(env.section([keep]));
    assert.deepEqual([r.summary.added, r.summary.removed, r.summary.replaced], [[], [], []]);
    await r.commit(AbortSignal.timeout(10_000));
    assert.deepEqual(Object.keys(role.status().sessions as object), []);
    // A change of that file is a change of the item: it starts again.
    await Deno.writeTextFile(keep, countingProgram("keep", port) + "\n");
    const again = await role.prepareReload!(env.section([keep]));
    assert.deepEqual(again.summary.replaced, ["session keep"]);
    await again.commit(AbortSignal.timeout(10_000));
    assert.deepEqual(Object.keys(role.status().sessions as object), ["keep"]);
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload replaces a changed program on the same port: the old session stops first, the new one counts from zero", async () => {
  await using env = await setup();
  const port = freeUdpPort();
  const file = await env.file("s", countingProgram("s", port));
  const { role } = await env.start([file]);
  try {
    await env.send(port, 3);
    await until("the old session counts", () => counted(role, "s") === 3);
    await Deno.writeTextFile(file, countingProgram("s", port).replace("Project s;", "Project s; # v2"));
    const r = await role.prepareReload!(env.section([file]));
    assert.deepEqual(r.summary.replaced, ["session s"]);
    await r.commit(AbortSignal.timeout(10_000));
    await env.send(port, 2);
    await until("the new session counts", () => counted(role, "s") === 2);
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload whose session cannot start at commit logs it and reports it in status and health", async () => {
  await using env = await setup();
  const port = freeUdpPort();
  const { role } = await env.start([]);
  try {
    const file = await env.file("late", countingProgram("late", port));
    const r = await role.prepareReload!(env.section([file]));
    // Someone else takes the port between prepare and commit: the commit rejects (the appliance then answers the
    // reload with ok: false and this text), and status and health say so.
    const thief = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port });
    try {
      await assert.rejects(r.commit(AbortSignal.timeout(10_000)), {
        name: "StartError",
        message: /^session late did not start: /,
      });
    } finally {
      thief.close();
    }
    const status = role.status() as { sessions: object; failed?: Record<string, string> };
    assert.deepEqual(Object.keys(status.sessions), []);
    assert.deepEqual(Object.keys(status.failed ?? {}), ["late"]);
    const health = role.health!();
    assert.equal(health.ok, false);
    assert.match(health.problems[0], /^session late: /);
    assert.ok(
      env.lines.some((l) => l.includes("level=error") && l.includes("reload could not start a session")),
    );
    // The next reload with the same config tries it again.
    const again = await role.prepareReload!(env.section([file]));
    assert.deepEqual(again.summary.added, ["session late"]);
    await again.commit(AbortSignal.timeout(10_000));
    assert.deepEqual(Object.keys(role.status().sessions as object), ["late"]);
    assert.equal(role.health!().ok, true);
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload whose replacing program cannot start runs the replaced session again as it was, and says so", async () => {
  await using env = await setup();
  const [pOld, pNew] = [freeUdpPort(), freeUdpPort()];
  const file = await env.file("swap", countingProgram("swap", pOld));
  const { role } = await env.start([file]);
  try {
    await env.send(pOld, 3);
    await until("the first datagrams counted", () => counted(role, "swap") === 3);
    await Deno.writeTextFile(file, countingProgram("swap", pNew));
    const r = await role.prepareReload!(env.section([file]));
    assert.deepEqual(r.summary.replaced, ["session swap"]);
    const thief = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: pNew });
    try {
      await assert.rejects(
        r.commit(AbortSignal.timeout(10_000)),
        {
          name: "StartError",
          message:
            /^session swap did not start: .*address already in use; session swap runs again as it was before the reload$/,
        },
      );
    } finally {
      thief.close();
    }
    // The old program runs again on its port (counting from zero: a new start), and no failure is listed.
    await env.send(pOld, 2);
    await until("the old port counts again", () => counted(role, "swap") === 2);
    assert.equal((role.status() as { failed?: object }).failed, undefined);
    assert.equal(role.health!().ok, true);
    // The node still knows the file's running text is the old one: the same reload, now that the port is free,
    // replaces it.
    const again = await role.prepareReload!(env.section([file]));
    assert.deepEqual(again.summary.replaced, ["session swap"]);
    await again.commit(AbortSignal.timeout(10_000));
    await env.send(pNew, 4);
    await until("the new port counts", () => counted(role, "swap") === 4);
    assert.ok(portFree(pOld), "the old port is free again");
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});

Deno.test("node reload does not start a replaced session that writes files again (it would truncate its recording), and says so", async () => {
  await using env = await setup();
  const [pOld, pNew] = [freeUdpPort(), freeUdpPort()];
  const saving = (port: number) =>
    `Project rec;\n{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(${port})); output_file = "rec.pcap"; overwrite = true; }\n`;
  const file = await env.file("rec", saving(pOld));
  const { role } = await env.start([file]);
  try {
    await Deno.writeTextFile(file, saving(pNew));
    const r = await role.prepareReload!(env.section([file]));
    const thief = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: pNew });
    try {
      await assert.rejects(r.commit(AbortSignal.timeout(10_000)), {
        name: "StartError",
        message:
          /^session rec did not start: .*; session rec is not started again as it was: it writes files \(.*rec\.pcap\)/,
      });
    } finally {
      thief.close();
    }
    assert.deepEqual(Object.keys(role.status().sessions as object), []);
    assert.ok((await Deno.stat(`${env.dir}/rec.pcap`)).isFile, "the recording is left as it was");
  } finally {
    await role.stop(AbortSignal.timeout(10_000));
  }
});
