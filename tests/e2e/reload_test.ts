/**
 * Config reload end to end: a real edgenode process under wrk load (keepalive and a new connection per request at
 * once) is sent SIGHUP with a config that adds a server, removes one, changes a weight; and with a config that has
 * errors. What an operator would notice: not one failed or reset request, connections made before the reload still
 * answer after it, the removed server gets no new client while its open connections go on, a drain set over the API
 * survives, and a bad config changes nothing and says where it is wrong.
 */
import assert from "node:assert/strict";
import { HttpBackend, startWrk } from "../_support/http_backend.ts";
import { poll, until } from "../_support/until.ts";
import { requireTools } from "../_support/tools.ts";
import { getJson, LISTENING, startEdgenode } from "./_process.ts";
import { listenPort, LO, services, setServer, TOKEN } from "./_scheduler.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { countingProgram } from "../_support/programs.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function schedulerConfig(servers: string, more = ""): string {
  return `roles: [scheduler${more ? ", relay, node" : ""}]
status:
  token: ${TOKEN}
shutdown:
  drain_timeout: 60s
${more ? `${more}\n` : ""}scheduler:
  io: fast
  services:
    - name: web
      listen: ${LO}:0
      picker: roundrobin
      max_per_client: 0
      servers:
${servers}
`;
}

/** The relay and node sections: relay r1 (and r2 when `added`), boot sessions `sessions`. */
function relayAndNode(
  dir: string,
  r1: [number, number],
  r2: [number, number] | null,
  sessions: string[],
): string {
  const relay = (name: string, [listen, target]: [number, number]) =>
    `    - {name: ${name}, listen: "${LO}:${listen}", targets: ["${LO}:${target}"]}`;
  return `relay:
  relays:
${[relay("r1", r1), ...(r2 ? [relay("r2", r2)] : [])].join("\n")}
node:
  bind: ${LO}
  data_dir: ${dir}/data
  sessions: [${sessions.map((s) => JSON.stringify(s)).join(", ")}]`;
}

/** Sends datagrams to `port` until `got` says one arrived. */
async function udpReaches(port: number, got: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const sender = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  try {
    await until(what, async () => {
      await sender.send(encoder.encode("x"), { transport: "udp", hostname: LO, port });
      return await got();
    });
  } finally {
    sender.close();
  }
}

/** One HTTP request on an open connection; the body (the backend's name). */
async function ask(conn: Deno.TcpConn): Promise<string> {
  await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: test\r\n\r\n"));
  const buf = new Uint8Array(4096);
  let text = "";
  while (!/\r\n\r\n[^\n]*\n/.test(text)) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`connection closed after ${JSON.stringify(text)}`);
    text += decoder.decode(buf.subarray(0, n));
  }
  return text.split("\r\n\r\n")[1].trim();
}

async function reloadOnce(
  edgenode: ReturnType<typeof startEdgenode>,
  statusPort: number,
  generation: number,
) {
  edgenode.kill("SIGHUP");
  return await poll(`reload to generation ${generation}`, async () => {
    const status = await getJson(`http://${LO}:${statusPort}/status`);
    const config =
      (status.process as { config: { generation: number; last_reload: Record<string, unknown> } })
        .config;
    return config.last_reload && config.generation >= generation ? config : null;
  });
}

Deno.test("a reload under wrk load adds, removes and reweighs servers: no request fails, none is reset", async () => {
  const { wrk } = await requireTools("the reload test", ["wrk"], "wrk (apt-get install wrk)");
  await using a = new HttpBackend("A");
  await using b = new HttpBackend("B");
  await using c = new HttpBackend("C");
  await using d = new HttpBackend("D");
  const dir = await Deno.makeTempDir({ prefix: "edgenode-reload-" });
  const path = `${dir}/edgenode.yaml`;
  const r1 = [freeUdpPort(), freeUdpPort()] as [number, number];
  const r2 = [freeUdpPort(), freeUdpPort()] as [number, number];
  const sessionPort = freeUdpPort();
  const program = `${dir}/added.dipronn`;
  try {
    await Deno.writeTextFile(program, countingProgram("added", sessionPort));
    await Deno.writeTextFile(
      path,
      schedulerConfig(
        [a, b, d].map((s) => `        - {address: "${s.address}"}`).join("\n"),
        relayAndNode(dir, r1, null, []),
      ),
    );
    await using edgenode = startEdgenode(["--config", path, "--status", `${LO}:0`]);
    const statusPort = Number((await edgenode.waitForLine(LISTENING))[1]);
    const port = listenPort(await services(statusPort), "web");

    // The operator drains D over the API; the config does not change D, so the drain must survive the reload.
    await setServer(statusPort, "web", d.address, { state: "drain" });
    // A connection made before the reload, to A (round robin from the first server; retried until it is A).
    let early: Deno.TcpConn | null = null;
    await until("a connection to A", async () => {
      const conn = await Deno.connect({ hostname: LO, port });
      if (await ask(conn) === "A") return (early = conn, true);
      conn.close();
      return false;
    });

    const url = `http://${LO}:${port}/`;
    const keepalive = startWrk(wrk, url, { seconds: 8, connections: 8 });
    const fresh = startWrk(wrk, url, { seconds: 8, connections: 4, close: true });
    await until("B serving under load", () => b.requests > 200);

    // A weight changed, B removed, C added, D unchanged (drained at runtime); a relay and a boot session added.
    await Deno.writeTextFile(
      path,
      schedulerConfig(
        [
          `        - {address: "${a.address}", weight: 3}`,
          `        - {address: "${c.address}"}`,
          `        - {address: "${d.address}"}`,
        ].join("\n"),
        relayAndNode(dir, r1, r2, [program]),
      ),
    );
    const config = await reloadOnce(edgenode, statusPort, 2);
    assert.equal(config.last_reload.ok, true, JSON.stringify(config.last_reload));
    const web = (await services(statusPort)).web;
    const servers = Object.fromEntries(web.servers.map((s) => [s.server, s]));
    assert.deepEqual(Object.keys(servers).sort(), [a.address, c.address, d.address].sort());
    assert.equal(servers[a.address].weight, 3);
    assert.equal(servers[d.address].state, "drain", "the runtime drain survives the reload");
    const roles = config.last_reload.roles as Record<string, { added: string[] }>;
    assert.deepEqual(Object.keys(roles).sort(), ["node", "relay", "scheduler"]);
    assert.deepEqual(roles.scheduler, {
      added: [],
      removed: [],
      changed: [
        `service web: server ${a.address} changed, server ${c.address} added, server ${b.address} removed (drains)`,
      ],
      replaced: [],
      notes: [],
    });
    assert.deepEqual(roles.relay.added, ["relay r2"]);
    assert.deepEqual(roles.node.added, ["session added"]);
    // The relay added relays, and the session added counts what reaches its input.
    const target = Deno.listenDatagram({ transport: "udp", hostname: LO, port: r2[1] });
    try {
      const received = target.receive();
      let arrived = false;
      received.then(() => arrived = true, () => {});
      await udpReaches(r2[0], () => arrived, "a datagram through the added relay r2");
    } finally {
      target.close();
    }
    await udpReaches(sessionPort, async () => {
      const sessions = await getJson(`http://${LO}:${statusPort}/status`);
      return JSON.stringify(sessions.roles).includes('"state":"running"') &&
        /"Count"/.test(JSON.stringify(sessions.roles)) &&
        counted(sessions.roles) > 0;
    }, "a datagram counted by the added session");
    const bAccepted = b.accepted;
    const bRequests = b.requests;
    await until("C taking new clients", () => c.accepted > 20);

    const [k, f] = await Promise.all([keepalive, fresh]);
    for (const [what, r] of [["keepalive", k], ["new connections", f]] as const) {
      console.log(
        `reload under load, ${what}: ${r.requests} requests, connect/read/write/timeout errors ${r.connectErrors}/${r.readErrors}/${r.writeErrors}/${r.timeouts}, non-2xx ${r.non2xx}`,
      );
      assert.ok(r.requests > 100, r.output);
      assert.equal(r.connectErrors + r.readErrors + r.writeErrors + r.timeouts, 0, r.output);
      assert.equal(r.non2xx, 0, r.output);
    }
    assert.equal(b.accepted, bAccepted, "the removed server got no new connection after the reload");
    assert.ok(b.requests > bRequests, "its established keepalive connections went on being served");
    assert.equal(await ask(early!), "A", "the connection made before the reload still answers");
    early!.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a reload with a bad config changes nothing and reports every error with file:line:col", async () => {
  await using a = new HttpBackend("A");
  const dir = await Deno.makeTempDir({ prefix: "edgenode-reload-" });
  const path = `${dir}/edgenode.yaml`;
  try {
    await Deno.writeTextFile(path, schedulerConfig(`        - {address: "${a.address}"}`));
    await using edgenode = startEdgenode(["--config", path, "--status", `${LO}:0`]);
    const statusPort = Number((await edgenode.waitForLine(LISTENING))[1]);
    const before = await services(statusPort);

    await Deno.writeTextFile(
      path,
      schedulerConfig(`        - {address: "${a.address}", weight: 999}\n        - {address: "nowhere:80"}`),
    );
    const config = await reloadOnce(edgenode, statusPort, 1);
    assert.equal(config.generation, 1);
    assert.equal(config.last_reload.ok, false);
    const errors = config.last_reload.errors as string[];
    assert.equal(errors.length, 2, errors.join("\n"));
    assert.match(errors[0], new RegExp(`^${path}:14:\\d+: .*weight`));
    assert.match(errors[1], new RegExp(`^${path}:15:\\d+: .*nowhere`));
    await edgenode.waitForLine(/msg="reload refused; nothing changed"/);
    assert.deepEqual((await services(statusPort)).web.servers.map((s) => s.server), [a.address]);
    assert.equal((await services(statusPort)).web.listen, before.web.listen);

    // The API answers the same errors, and nothing changes either.
    const answer = await fetch(`http://${LO}:${statusPort}/reload`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(answer.status, 400);
    assert.deepEqual((await answer.json()).errors, errors);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Packets the added session's Count AP took in, from /status roles. */
function counted(roles: unknown): number {
  const node = (roles as {
    node?: { sessions?: Record<string, { aps: { name: string; inputs: { packets: number }[] }[] }> };
  })
    .node;
  const session = node?.sessions?.added;
  const count = session?.aps.find((ap) => ap.name === "Count");
  return count?.inputs.reduce((n, i) => n + i.packets, 0) ?? 0;
}
