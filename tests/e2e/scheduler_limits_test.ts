/**
 * The scheduler's limits and timeouts end to end, on a real edgenode process: a server's maxconn with the queue
 * behind it (overflow and queue timeout), the per-client limit, the connect and idle timeouts, and maintenance over
 * the operations API. What a client notices is whether it is served, waits, or is closed, and when; what an operator
 * notices is in /status and /metrics. Time is real: waits are bounded and measured, never slept.
 */
import assert from "node:assert/strict";
import { Backend, blackhole, Client, clientsOn, spread } from "../_support/backends.ts";
import { poll as until } from "../_support/until.ts";
import { tempConfig } from "./_process.ts";
import {
  assertMetrics,
  counts,
  listenPort,
  LO,
  serverStatus,
  services,
  setServer,
  startScheduler,
  TOKEN,
} from "./_scheduler.ts";

const QUEUE_TIMEOUT_MS = 500;
const CONNECT_TIMEOUT_MS = 300;
const IDLE_TIMEOUT_MS = 1000;

Deno.test("edgenode scheduler queues clients over a server's maxconn, refuses past the queue and times queued ones out", async () => {
  await using s = new Backend("S");
  await using config = await tempConfig(`
roles: [scheduler]
scheduler:
  services:
    - name: q
      listen: ${LO}:0
      queue: 1
      queue_timeout: ${QUEUE_TIMEOUT_MS}ms
      check: {interval: 1m}
      servers: [{address: "${s.address}", maxconn: 1}]
`);
  const { edgenode, statusPort } = await startScheduler(config);
  await using _ = edgenode;
  const port = listenPort(await services(statusPort), "q");
  const service = async () => (await services(statusPort)).q;

  // The first client takes the server's one slot; the second waits in the queue; the third finds it full.
  using first = await Client.connect(port);
  assert.equal(await first.readLine(), "S");
  using second = await Client.connect(port);
  await until("the second client to be queued", async () => (await service()).queue_length === 1);
  using third = await Client.connect(port);
  assert.equal(await third.readLine(), null, "the third client is closed without a server");
  assert.equal((await service()).queue_full, 1);

  // The slot comes free: the queued client gets it.
  first[Symbol.dispose]();
  assert.equal(await second.readLine(), "S");

  // A client queued behind a slot that never comes free is closed after queue_timeout.
  const connectedAt = performance.now();
  using fourth = await Client.connect(port);
  const waited = (await fourth.ended()) - connectedAt;
  assert.ok(waited >= QUEUE_TIMEOUT_MS - 50, `closed after ${Math.round(waited)} ms in the queue`);
  assert.ok(waited < QUEUE_TIMEOUT_MS + 1500, `closed after ${Math.round(waited)} ms in the queue`);
  const after = await service();
  assert.deepEqual(
    { queued: after.queued, queue_timeouts: after.queue_timeouts, queue_length: after.queue_length },
    { queued: 2, queue_timeouts: 1, queue_length: 0 },
  );
  await assertMetrics(statusPort, [
    `edgenode_scheduler_service_queue_timeouts_total{service="q"} 1`,
    `edgenode_scheduler_server_maxconn{service="q",server="${s.address}"} 1`,
  ]);

  second[Symbol.dispose]();
  edgenode.kill("SIGTERM");
  assert.equal((await edgenode.waitForExit()).code, 0);
});

Deno.test("edgenode scheduler limits connections per client address, and applies its connect and idle timeouts", async () => {
  await using s = new Backend("S");
  await using hole = await blackhole();
  await using config = await tempConfig(`
roles: [scheduler]
scheduler:
  services:
    - name: pc
      listen: ${LO}:0
      max_per_client: 2
      check: {interval: 1m}
      servers: [{address: "${s.address}"}]
    - name: ct
      listen: ${LO}:0
      picker: roundrobin
      connect_timeout: ${CONNECT_TIMEOUT_MS}ms
      check: {interval: 1m}
      servers: [{address: "${LO}:${hole.port}"}, {address: "${s.address}"}]
    - name: idle
      listen: ${LO}:0
      idle_timeout: ${IDLE_TIMEOUT_MS}ms
      check: {interval: 1m}
      servers: [{address: "${s.address}"}]
`);
  const { edgenode, statusPort } = await startScheduler(config);
  await using _ = edgenode;
  const all = await services(statusPort);

  // Two connections from 127.0.0.1 at once are allowed; the third is closed; once one ends, there is room again.
  const pc = listenPort(all, "pc");
  using one = await Client.connect(pc);
  using two = await Client.connect(pc);
  assert.deepEqual([await one.readLine(), await two.readLine()], ["S", "S"]);
  using three = await Client.connect(pc);
  assert.equal(await three.readLine(), null, "a third connection from the same address is closed");
  assert.equal((await services(statusPort)).pc.refused_client_limit, 1);
  one[Symbol.dispose]();
  await until(
    "the first connection to end",
    async () => (await services(statusPort)).pc.open_connections === 1,
  );
  using four = await Client.connect(pc);
  assert.equal(await four.readLine(), "S");

  // A connect that hangs (a server whose SYNs are dropped) is given up after connect_timeout and the client is
  // served by the other server: two clients in turn, at least one of them through the hanging server first.
  const ct = listenPort(all, "ct");
  const startedAt = performance.now();
  assert.deepEqual(counts(await spread(ct, 2)), { S: 2 }, "both clients served");
  assert.ok(performance.now() - startedAt >= CONNECT_TIMEOUT_MS - 50, "one client waited for the timeout");
  const stuck = await serverStatus(statusPort, "ct", `${LO}:${hole.port}`);
  assert.ok(stuck.failed_connects >= 1, "the hanging server's timed-out connects count against it");
  assert.match(stuck.last_check!.detail, /Cannot connect to .*: timed out$/);
  assert.equal((await services(statusPort)).ct.retries, stuck.failed_connects, "each was retried on S");

  // A connection with no byte either way for idle_timeout is closed.
  using quiet = await Client.connect(listenPort(all, "idle"));
  assert.equal(await quiet.readLine(), "S");
  const lastByteAt = performance.now();
  const quietFor = (await quiet.ended()) - lastByteAt;
  assert.ok(quietFor >= IDLE_TIMEOUT_MS - 50, `closed after ${Math.round(quietFor)} ms idle`);
  assert.ok(quietFor < IDLE_TIMEOUT_MS + 2000, `closed after ${Math.round(quietFor)} ms idle`);
  assert.equal((await services(statusPort)).idle.idle_timeouts, 1);

  for (const c of [two, four]) c[Symbol.dispose]();
  edgenode.kill("SIGTERM");
  assert.equal((await edgenode.waitForExit()).code, 0);
});

Deno.test("edgenode scheduler puts a server into maintenance over the API: its connections close, new ones go elsewhere", async () => {
  await using a = new Backend("A");
  await using b = new Backend("B");
  await using config = await tempConfig(`
roles: [scheduler]
status:
  token: ${TOKEN}
scheduler:
  services:
    - name: m
      listen: ${LO}:0
      picker: roundrobin
      check: {interval: 1m}
      servers: [{address: "${a.address}"}, {address: "${b.address}"}]
`);
  const { edgenode, statusPort } = await startScheduler(config);
  await using _ = edgenode;
  const port = listenPort(await services(statusPort), "m");
  const [onA] = await clientsOn(port, "A", 1);
  using _onA = onA;
  const ended = onA.ended();

  const answer = await setServer(statusPort, "m", a.address, { state: "maint" });
  const answeredAt = performance.now();
  assert.deepEqual(
    { state: answer.state, admin: answer.admin, persisted: answer.persisted },
    { state: "maint", admin: "maint", persisted: false },
  );
  assert.match(String(answer.note), /restart returns to the state and weight in the config/);
  assert.ok((await ended) - answeredAt < 1000, "A's open connection was closed");
  assert.deepEqual(counts(await spread(port, 4)), { B: 4 });
  assert.equal((await serverStatus(statusPort, "m", a.address)).state, "maint");
  await assertMetrics(statusPort, [
    `edgenode_scheduler_server_admin_state{service="m",server="${a.address}"} 2`,
    `edgenode_scheduler_server_up{service="m",server="${a.address}"} 0`,
  ]);

  // A weight change and back to ready: A takes its turns again.
  const ready = await setServer(statusPort, "m", a.address, { state: "ready", weight: 3 });
  assert.deepEqual({ state: ready.state, weight: ready.weight }, { state: "up", weight: 3 });
  assert.deepEqual(counts(await spread(port, 4)), { A: 2, B: 2 });

  edgenode.kill("SIGTERM");
  assert.equal((await edgenode.waitForExit()).code, 0);
});
