/**
 * The scheduler role end to end: a real edgenode process in front of real loopback backends (in this process, or
 * subprocesses where a server must be killed or frozen for real), load agents, and clients that read which backend
 * answered. Time is real here, so every wait polls /status or a socket with a bound; none sleeps for correctness.
 */
import assert from "node:assert/strict";
import {
  AgentStub,
  Backend,
  BackendProcess,
  backendsOnConsecutivePorts,
  Client,
  clientsOn,
  fetchName,
  ProxyBackend,
  spread,
} from "../_support/backends.ts";
import { poll as until } from "../_support/until.ts";
import { getJson, runToEnd, tempConfig } from "./_process.ts";
import {
  assertMetrics,
  counts,
  listenPort,
  LO,
  serverStatus,
  services,
  startScheduler,
  TOKEN,
} from "./_scheduler.ts";

Deno.test("edgenode scheduler spreads clients by round-robin and least load, keeps affinity, skips a dead port of a range", async () => {
  await using a = new Backend("A");
  await using b = new Backend("B");
  await using c = new Backend("C");
  await using x = new Backend("X");
  await using y = new Backend("Y");
  await using agentX = new AgentStub("80%");
  await using agentY = new AgentStub("20%");
  await using proxied1 = new ProxyBackend();
  await using proxied2 = new ProxyBackend();
  const range = backendsOnConsecutivePorts(["R0", "R1", null, "R3"]);
  const base = range[0].port;
  try {
    await using config = await tempConfig(`
roles: [scheduler]
status:
  token: ${TOKEN}
scheduler:
  services:
    - name: rr
      listen: ${LO}:0
      picker: roundrobin
      servers: [{address: "${a.address}"}, {address: "${b.address}"}, {address: "${c.address}"}]
    - name: ll
      listen: ${LO}:0
      picker: leastload
      agent_interval: 100ms
      servers:
        - {address: "${x.address}", agent: "${LO}:${agentX.port}"}
        - {address: "${y.address}", agent: "${LO}:${agentY.port}"}
    - name: sticky
      listen: ${LO}:0
      picker: roundrobin
      persistence: 1m
      servers: [{address: "${a.address}"}, {address: "${b.address}"}, {address: "${c.address}"}]
    - name: range
      listen: ${LO}:0
      picker: roundrobin
      check: {interval: 1m}
      servers: [{address: "${LO}:${base}-${base + 3}"}]
    - name: pv1
      listen: ${LO}:0
      proxy_protocol: v1
      servers: [{address: "${proxied1.address}"}]
    - name: pv2
      listen: ${LO}:0
      proxy_protocol: v2
      servers: [{address: "${proxied2.address}"}]
`);
    const { edgenode, statusPort } = await startScheduler(config);
    await using _ = edgenode;
    const all = await services(statusPort);
    // The fast engine found the event loop's epoll set while the services' checks were opening sockets of its own:
    // it waits there, with no thread hop per wake-up.
    const status = await getJson(`http://${LO}:${statusPort}/status`);
    const role = (status.roles as { scheduler: { io: string; io_wait: string } }).scheduler;
    assert.deepEqual({ io: role.io, io_wait: role.io_wait }, { io: "fast", io_wait: "event loop thread" });

    // Round-robin: 300 clients, 100 each, in strict turns.
    const rr = listenPort(all, "rr");
    const firstSix: (string | null)[] = [];
    for (let i = 0; i < 6; i++) firstSix.push(await fetchName(rr));
    assert.deepEqual(firstSix.slice(3), firstSix.slice(0, 3), "round-robin takes the servers in turn");
    assert.deepEqual(new Set(firstSix), new Set(["A", "B", "C"]));
    const rest = await spread(rr, 294);
    assert.deepEqual(counts(rest), { A: 98, B: 98, C: 98 });

    // Least load: the server whose agent reports 80% idle takes the clients; when the reports swap, so do they.
    const ll = listenPort(all, "ll");
    const loads = async () => (await services(statusPort)).ll.servers.map((s) => s.load_percent);
    await until("both agents' first reports", async () => JSON.stringify(await loads()) === "[20,80]");
    assert.deepEqual(counts(await spread(ll, 100)), { X: 100 });
    agentX.reply = "10%";
    agentY.reply = "90%";
    await until("the swapped reports", async () => JSON.stringify(await loads()) === "[90,10]");
    assert.deepEqual(counts(await spread(ll, 100)), { Y: 100 });

    // The redirect route sends players straight to the least-loaded server, as a 302 or a metafile.
    const redirect = (path: string) =>
      fetch(`http://${LO}:${statusPort}/redirect/${path}`, { redirect: "manual" });
    const moved = await redirect("ll/live/cam1");
    assert.equal(moved.status, 302);
    assert.equal(moved.headers.get("location"), `rtsp://${y.address}/live/cam1`);
    await moved.body?.cancel();
    const sdp = await redirect("ll/live/cam1.sdp");
    assert.equal(sdp.headers.get("content-type"), "application/sdp");
    assert.match(await sdp.text(), new RegExp(`^a=control:rtsp://${y.address}/live/cam1\r$`, "m"));
    for (
      const [ext, type, body] of [
        ["ram", "audio/x-pn-realaudio", `rtsp://${y.address}/live/cam1\n`],
        ["m3u", "audio/x-mpegurl", `#EXTM3U\nrtsp://${y.address}/live/cam1\n`],
      ]
    ) {
      const meta = await redirect(`ll/live/cam1.${ext}`);
      assert.equal(meta.headers.get("content-type"), type);
      assert.equal(await meta.text(), body);
    }
    const unsafe = await redirect("ll/live%0d%0acam1");
    assert.equal(unsafe.status, 400);
    await unsafe.body?.cancel();

    // Affinity: every connection from 127.0.0.1 goes to the server it had first, where round-robin alone rotates.
    const sticky = await spread(listenPort(all, "sticky"), 20);
    assert.equal(sticky.size, 1, `one server for one client address, got ${JSON.stringify(counts(sticky))}`);
    assert.equal([...sticky.values()][0], 20);
    // The redirect route knows the player's address too: a redirect from 127.0.0.1 goes where its connections went,
    // under the same persistence entry (keyed 0.0.0.0, every player once looked like one client).
    const stickyServer = { A: a, B: b, C: c }[[...sticky.keys()][0] as "A" | "B" | "C"].address;
    const stickyRedirect = await redirect("sticky/live/cam1");
    assert.equal(stickyRedirect.headers.get("location"), `rtsp://${stickyServer}/live/cam1`);
    await stickyRedirect.body?.cancel();
    assert.equal((await services(statusPort)).sticky.persistence_entries, 1, "one client address, one entry");

    // Port range: one entry is four servers; the port nobody answers on is skipped without a client noticing.
    const rangeCounts = await spread(listenPort(all, "range"), 40);
    assert.equal(rangeCounts.get(null), undefined, "no client failed");
    for (const name of ["R0", "R1", "R3"]) {
      assert.ok((rangeCounts.get(name) ?? 0) >= 10, `${name} took its share`);
    }
    const rangeStatus = (await services(statusPort)).range;
    assert.deepEqual(
      rangeStatus.servers.map((s) => s.server),
      [0, 1, 2, 3].map((i) => `${LO}:${base + i}`),
    );
    const dead = rangeStatus.servers[2];
    assert.equal(dead.state, "down", "failed client connects took the silent port down");
    assert.ok(
      dead.failed_connects >= 1 && dead.failed_connects <= 3,
      `${dead.failed_connects} failed connects`,
    );
    assert.equal(rangeStatus.no_server, 0);

    // PROXY protocol: the backend learns the client's own address and port, in either version.
    for (const [name, backend, version] of [["pv1", proxied1, 1], ["pv2", proxied2, 2]] as const) {
      using client = await Client.connect(listenPort(all, name));
      assert.equal(await client.readLine(), `${LO} ${client.localPort}`, name);
      assert.equal(backend.headers[0].version, version);
      assert.deepEqual(backend.headers[0].destination, { host: LO, port: listenPort(all, name) });
    }

    // /metrics has the same numbers, per service and per server.
    const metrics = await assertMetrics(statusPort, [
      `edgenode_scheduler_service_accepted_total{service="rr"} 300`,
      ...[a, b, c].map((s) =>
        `edgenode_scheduler_server_connections_total{service="rr",server="${s.address}"} 100`
      ),
      `edgenode_scheduler_server_up{service="range",server="${LO}:${base + 2}"} 0`,
      `edgenode_scheduler_server_effective_weight{service="ll",server="${y.address}"} 0.9`,
      `edgenode_scheduler_service_open_connections{service="rr"} 0`,
    ]);
    assert.match(metrics, /^# TYPE edgenode_scheduler_service_queue_full_total counter$/m);

    edgenode.kill("SIGTERM");
    const result = await edgenode.waitForExit();
    assert.equal(result.code, 0, result.stderr);
  } finally {
    for (const r of range) await r.kill();
  }
});

interface Attempt {
  readonly start: number;
  readonly end: number;
  readonly name: string | null;
}

/** `concurrency` clients connecting one after another through `port` until stopped, each noting who answered. */
function hammer(port: number, concurrency: number) {
  const attempts: Attempt[] = [];
  let stopped = false;
  const loops = Array.from({ length: concurrency }, async () => {
    while (!stopped) {
      const start = performance.now();
      let name: string | null;
      try {
        name = await fetchName(port, 3000);
      } catch {
        name = null;
      }
      attempts.push({ start, end: performance.now(), name });
    }
  });
  return {
    attempts,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

Deno.test("edgenode scheduler survives a killed server, re-enables it, drains it over the API and cuts a frozen one", async () => {
  await using a = await BackendProcess.start("A", { streamEveryMs: 50 });
  let b = await BackendProcess.start("B", { streamEveryMs: 50 });
  const bKey = b.address;
  const held: Client[] = [];
  let load: ReturnType<typeof hammer> | null = null;
  try {
    await using config = await tempConfig(`
roles: [scheduler]
status:
  token: ${TOKEN}
scheduler:
  services:
    - name: pool
      listen: ${LO}:0
      picker: roundrobin
      connect_timeout: 1s
      check: {interval: 100ms, timeout: 300ms, rise: 2, fall: 2, send: "PING\\n", expect: "PING"}
      servers: [{address: "${a.address}"}, {address: "${b.address}"}]
`);
    const { edgenode, statusPort } = await startScheduler(config);
    await using _ = edgenode;
    const port = listenPort(await services(statusPort), "pool");
    const state = async () => (await serverStatus(statusPort, "pool", bKey)).state;

    // Six streaming clients, three on each server, then a steady stream of new clients.
    const onA = await clientsOn(port, "A", 3);
    const onB = await clientsOn(port, "B", 3);
    held.push(...onA, ...onB);
    load = hammer(port, 4);
    await until("the load to get going", () => load!.attempts.length >= 40);

    // Kill B for real. Its clients are closed within a second; A's stream on.
    const ended = onB.map((client) => client.ended());
    const killedAt = performance.now();
    await b.kill();
    const deadAt = performance.now();
    const endedAt = await Promise.all(ended);
    for (const t of endedAt) {
      assert.ok(t - killedAt < 1000, `a client of B closed ${Math.round(t - killedAt)} ms after the kill`);
    }
    for (const client of onA) assert.equal(await client.readSome(), true, "A's clients still receive");
    await until("B to be marked down", async () => (await state()) === "down");
    await until(
      "more load after the kill",
      () => load!.attempts.filter((t) => t.start > deadAt).length >= 60,
    );
    await load.stop();

    const before = load.attempts.filter((t) => t.end < killedAt);
    const after = load.attempts.filter((t) => t.start > deadAt);
    assert.deepEqual(before.filter((t) => t.name === null), [], "no client failed before the kill");
    assert.deepEqual(
      after.filter((t) => t.name !== "A"),
      [],
      "after the kill every client was served, by A: zero failed connects while A is up",
    );
    // Clients whose connection to B was already made when it died (in flight) are B's clients: they may be closed.

    // Once down, B is not even tried: its counters stand still while new clients come.
    const downB = await serverStatus(statusPort, "pool", bKey);
    assert.deepEqual(counts(await spread(port, 30)), { A: 30 });
    const stillB = await serverStatus(statusPort, "pool", bKey);
    assert.equal(stillB.total, downB.total);
    assert.equal(stillB.failed_connects, downB.failed_connects);

    // B comes back on its port: the checks re-enable it (rise 2) and it takes its turns again.
    b = await BackendProcess.start("B", { port: b.port, streamEveryMs: 50 });
    await until("B to be re-enabled by its checks", async () => (await state()) === "up");
    assert.deepEqual(counts(await spread(port, 10)), { A: 5, B: 5 });

    // Drain over the API: the token is required, new clients go to A, the open one on B goes on.
    const [keep] = await clientsOn(port, "B", 1);
    held.push(keep);
    const url = `http://${LO}:${statusPort}/scheduler/services/pool/servers/${bKey}`;
    const drain = JSON.stringify({ state: "drain" });
    const refused = await fetch(url, { method: "POST", body: drain });
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
    const answer = await fetch(url, {
      method: "POST",
      body: drain,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(answer.status, 200);
    const body = await answer.json();
    assert.equal(body.state, "drain");
    assert.equal(body.persisted, false);
    assert.deepEqual(counts(await spread(port, 10)), { A: 10 }, "no new client on a draining server");
    assert.equal(await keep.readSome(), true, "the open connection on B still streams");
    await keep.write("hello\n");
    assert.match(
      (await keep.readLine())!,
      /^\.*hello$/,
      "the echo (after streamed dots) through the drained server",
    );
    const ready = await fetch(url, {
      method: "POST",
      body: JSON.stringify({ state: "ready" }),
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal((await ready.json()).state, "up");
    assert.deepEqual(counts(await spread(port, 10)), { A: 5, B: 5 });

    // Freeze B (SIGSTOP): its sockets stay open, but its checks go unanswered; once it is marked down the
    // scheduler closes its clients itself rather than leave them hanging.
    const frozen = await clientsOn(port, "B", 2);
    held.push(...frozen);
    const cutBefore = (await services(statusPort)).pool.closed_by_server_down as number;
    const frozenEnded = frozen.map((client) => client.ended());
    const stoppedAt = performance.now();
    b.signal("SIGSTOP");
    const cut = await Promise.all(frozenEnded);
    const downAt = Date.parse((await serverStatus(statusPort, "pool", bKey)).changed_at);
    assert.equal(await state(), "down");
    for (const t of cut) {
      const wall = performance.timeOrigin + t;
      assert.ok(wall - downAt < 1000, `closed ${Math.round(wall - downAt)} ms after B was marked down`);
      assert.ok(t - stoppedAt < 3000, `closed ${Math.round(t - stoppedAt)} ms after the freeze`);
    }
    const cutAfter = (await services(statusPort)).pool.closed_by_server_down as number;
    assert.ok(cutAfter - cutBefore >= 2, `${cutAfter - cutBefore} connections cut because B went down`);
    assert.deepEqual(counts(await spread(port, 6)), { A: 6 });
    b.signal("SIGCONT");

    // Open connections would hold a graceful stop for its whole drain time: end them first.
    for (const client of held.splice(0)) client[Symbol.dispose]();
    edgenode.kill("SIGTERM");
    const result = await edgenode.waitForExit();
    assert.equal(result.code, 0, result.stderr);
  } finally {
    await load?.stop();
    for (const client of held) client[Symbol.dispose]();
    await b.kill();
  }
});

Deno.test("edgenode scheduler imports services from a Central Dispatch agent-rules file beside its config", async () => {
  // The fixture's rules use fixed ports (a rule cannot say 0): 19471 -> 19472 and 19473 -> 19474.
  await using _backend = new Backend("rules-backend", { port: 19472 });
  const { edgenode, statusPort } = await startScheduler({ path: "tests/fixtures/scheduler/rules.yaml" });
  await using _ = edgenode;
  const all = await services(statusPort);
  assert.deepEqual(Object.keys(all), ["telnet-127.0.0.1-19471", "http-127.0.0.1-19473"]);
  const telnet = all["telnet-127.0.0.1-19471"];
  assert.equal(telnet.listen, `${LO}:19471`);
  assert.equal(telnet.origin, "rules tests/fixtures/scheduler/agent-rules:4:1");
  assert.equal(telnet.picker, "roundrobin", "rules_service settings apply");
  assert.deepEqual(telnet.servers.map((s) => s.server), [`${LO}:19472`]);
  const http = all["http-127.0.0.1-19473"];
  assert.equal(http.origin, "rules tests/fixtures/scheduler/agent-rules:5:1");
  assert.deepEqual(http.servers.map((s) => s.server), [`${LO}:19474`, "127.0.0.2:19474"]);
  assert.equal(await fetchName(19471), "rules-backend");
  edgenode.kill("SIGTERM");
  assert.equal((await edgenode.waitForExit()).code, 0);
});

Deno.test("edgenode scheduler refuses to start on a bad agent-rules file, naming each mistake by file:line:col", async () => {
  const result = await runToEnd([
    "--config",
    "tests/fixtures/scheduler/rules-bad.yaml",
    "--status",
    `${LO}:0`,
  ]);
  assert.equal(result.code, 1);
  const file = "tests/fixtures/scheduler/agent-rules-bad";
  assert.equal(
    result.stderr,
    [
      `edgenode: Agent-rules file ${file} has errors (nothing was imported):`,
      `${file}:3:46: Server "10.10.10.10.1" is not a valid IP address (IPv4 has four parts, not 5)`,
      `${file}:4:28: Server port "http" is not a whole number (1..65535)`,
      "",
    ].join("\n"),
  );
  const lines = (await Deno.readTextFile(file)).split("\n");
  assert.equal(lines[2].indexOf("10.10.10.10.1") + 1, 46);
  assert.equal(lines[3].indexOf("http") + 1, 28);
});
