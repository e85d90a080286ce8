/**
 * Binary upgrade end to end (`edgenode --takeover PATH`): real edgenode processes, a real nginx behind the scheduler
 * (io: fast), wrk for load, a sequenced UDP stream through a relay. What an operator would notice: not one request
 * fails or is reset while the new process takes the sockets over, a connection made before the takeover goes on
 * answering while the old process drains, the old process exits 0, the relay's stream loses no datagram, and a
 * takeover that fails leaves the running process serving as before.
 */
import assert from "node:assert/strict";
import { startWrk } from "../_support/http_backend.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";
import { requireTools } from "../_support/tools.ts";
import { until } from "../_support/until.ts";
import { ControlListener } from "../../lib/net/fd_channel.ts";
import { type EdgenodeProcess, startEdgenode } from "../e2e/_process.ts";
import { services } from "../e2e/_scheduler.ts";
import { ask, LO, SeqReceiver, SeqSender, startNginx } from "./_peers.ts";

const RUNNING = /msg=running /;
const ALL_STOPPED = /msg="all stopped"/;

interface Setup {
  readonly dir: string;
  readonly control: string;
  readonly statusPort: number;
}

async function setup(): Promise<Setup & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "edgenode-takeover-" });
  return {
    dir,
    control: `${dir}/control.sock`,
    statusPort: freeTcpPort(),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
  };
}

function config(s: Setup, roles: string, sections: string): string {
  return `roles: [${roles}]
status:
  listen: "${LO}:${s.statusPort}"
shutdown:
  drain_timeout: 20s
process:
  control_socket: "${s.control}"
${sections}
`;
}

async function write(s: Setup, name: string, text: string): Promise<string> {
  const path = `${s.dir}/${name}`;
  await Deno.writeTextFile(path, text);
  return path;
}

Deno.test("a takeover under wrk load (keepalive and new connections) refuses and resets nothing; the old process drains and exits 0", async () => {
  const { wrk } = await requireTools("the takeover test", ["wrk"], "wrk (apt-get install wrk)");
  await using s = await setup();
  await using nginx = await startNginx();
  const port = freeTcpPort();
  const path = await write(
    s,
    "edgenode.yaml",
    config(
      s,
      "scheduler",
      `scheduler:
  io: fast
  services:
    - name: web
      listen: "${LO}:${port}"
      max_per_client: 0
      servers:
        - {address: "${LO}:${nginx.port}"}`,
    ),
  );
  await using old = startEdgenode(["--config", path]);
  await old.waitForLine(RUNNING);
  // A connection made before the takeover: the old process serves it to the end of its drain.
  const early = await Deno.connect({ hostname: LO, port });
  try {
    assert.equal(await ask(early), "hello");
    const url = `http://${LO}:${port}/`;
    const keepalive = startWrk(wrk, url, { seconds: 6, connections: 8 });
    const fresh = startWrk(wrk, url, { seconds: 6, connections: 4, close: true });
    await until("load through the old process", async () => {
      const web = await webStatus(s.statusPort);
      return (web?.connections_total ?? 0) > 300;
    });

    await using next = startEdgenode(["--config", path, "--takeover", s.control]);
    await next.waitForLine(RUNNING);
    await old.waitForLine(/msg="taken over: stopping accepting and draining"/);
    assert.equal(await ask(early), "hello", "the early connection answers while the old process drains");
    early.close();

    const [k, f] = await Promise.all([keepalive, fresh]);
    for (const [name, r] of [["keepalive", k], ["new connections", f]] as const) {
      console.log(
        `${name}: ${r.requests} requests; connect ${r.connectErrors}, read ${r.readErrors}, write ${r.writeErrors}, ` +
          `timeout ${r.timeouts}, non-2xx ${r.non2xx}`,
      );
      assert.ok(r.requests > 0, r.output);
      assert.equal(r.connectErrors + r.readErrors + r.writeErrors + r.timeouts, 0, `${name}: ${r.output}`);
      assert.equal(r.non2xx, 0, `${name}: ${r.output}`);
    }
    const ended = await old.waitForExit();
    assert.equal(ended.code, 0, ended.stderr);
    assert.match(ended.stderr, ALL_STOPPED);
    // The new process serves alone now, on the socket it was handed (and the control socket is its own).
    const after = await Deno.connect({ hostname: LO, port });
    assert.equal(await ask(after), "hello");
    after.close();
    // Only the new process answers on the status port now: it took new connections while wrk ran.
    const web = await webStatus(s.statusPort);
    console.log(`connections the new process passed to nginx: ${web?.connections_total}`);
    assert.ok((web?.connections_total ?? 0) > 100, "the new process accepted connections under load");
    assert.ok(
      next.stderrLines.some((l) => /takeover: received sockets".*sockets=1/.test(l)),
      next.stderrLines.join("\n"),
    );
    assert.ok((await Deno.lstat(s.control)).isSocket);
    next.kill("SIGTERM");
    assert.equal((await next.waitForExit()).code, 0);
  } finally {
    try {
      early.close();
    } catch { /* closed */ }
  }
});

Deno.test("a relay's stream goes through a takeover without losing a datagram; a reflector's sockets are handed over too", async () => {
  await using s = await setup();
  await using receiver = new SeqReceiver();
  const listen = freeUdpPort();
  const path = await write(
    s,
    "edgenode.yaml",
    config(
      s,
      "relay",
      `relay:
  relays:
    - {name: r1, listen: "${LO}:${listen}", targets: ["${LO}:${receiver.port}"]}
  reflectors:
    - name: lecture
      data: "${LO}:${freeUdpPort()}"
      registration: "${LO}:${freeUdpPort()}"
      allow: [loopback]`,
    ),
  );
  await using old = startEdgenode(["--config", path]);
  await old.waitForLine(RUNNING);
  // 4,000 datagrams a second: 20 every 5 ms.
  await using sender = new SeqSender(listen, 20, 5);
  await until("the stream through the old process", () => receiver.seen.size > 2000);
  await using next = startEdgenode(["--config", path, "--takeover", s.control]);
  await next.waitForLine(RUNNING);
  const ended = await old.waitForExit();
  assert.equal(ended.code, 0, ended.stderr);
  const atExit = sender.sent;
  await until("the stream through the new process", () => receiver.seen.size > atExit + 2000);
  sender.stop();
  const sent = sender.sent;
  // Everything sent has had time to arrive once the count stops moving (or reaches what was sent).
  await until("the last datagrams", () => receiver.seen.size >= sent, 5_000).catch(() => {});
  const lost = sent - receiver.seen.size;
  console.log(
    `relay through a takeover: sent ${sent}, received ${receiver.seen.size}, lost ${lost}, ` +
      `duplicated ${receiver.duplicates}`,
  );
  assert.equal(lost, 0, "no datagram lost through the hand-over");
  assert.equal(receiver.duplicates, 0);
  // The relay's socket and the reflector's data and registration sockets were adopted, not bound anew.
  assert.ok(
    next.stderrLines.some((l) => /takeover: received sockets".*sockets=3/.test(l)),
    next.stderrLines.join("\n"),
  );
  assert.ok(!next.stderrLines.some((l) => /not in this config/.test(l)));
  next.kill("SIGTERM");
  assert.equal((await next.waitForExit()).code, 0);
});

Deno.test("a takeover that fails (a bad config, a socket it cannot bind) leaves the running process serving", async () => {
  await using s = await setup();
  await using nginx = await startNginx();
  const port = freeTcpPort();
  const scheduler = `scheduler:
  io: fast
  services:
    - name: web
      listen: "${LO}:${port}"
      servers:
        - {address: "${LO}:${nginx.port}"}`;
  const path = await write(s, "edgenode.yaml", config(s, "scheduler", scheduler));
  await using old = startEdgenode(["--config", path]);
  await old.waitForLine(RUNNING);
  const early = await Deno.connect({ hostname: LO, port });
  try {
    assert.equal(await ask(early), "hello");

    // A config with errors: refused before anything is asked of the running process.
    const bad = await write(
      s,
      "bad.yaml",
      config(s, "scheduler", scheduler.replace("io: fast", "io: fastest")),
    );
    await using badRun = startEdgenode(["--config", bad, "--takeover", s.control]);
    const refused = await badRun.waitForExit();
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /bad\.yaml:\d+:\d+: scheduler\.io/);

    // A config that wants a UDP port someone else holds: the new process cannot start, tells the old one to go on.
    const taken = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
    try {
      const blocked = await write(
        s,
        "blocked.yaml",
        config(
          s,
          "scheduler, relay",
          `${scheduler}
relay:
  relays:
    - {name: r1, listen: "${LO}:${(taken.addr as Deno.NetAddr).port}", targets: ["${LO}:9"]}`,
        ),
      );
      await using failing = startEdgenode(["--config", blocked, "--takeover", s.control]);
      const failed = await failing.waitForExit();
      assert.equal(failed.code, 1);
      assert.match(failed.stderr, /address already in use/);
      await old.waitForLine(/takeover aborted by the new process; still serving/);
    } finally {
      taken.close();
    }
    // Untouched: the early connection, new connections, and the control socket all work as before.
    assert.equal(await ask(early), "hello");
    const fresh = await Deno.connect({ hostname: LO, port });
    assert.equal(await ask(fresh), "hello");
    fresh.close();
    assert.equal(old.exited, undefined, "the old process runs on");
    // ... and it can still be taken over.
    await using next = startEdgenode(["--config", path, "--takeover", s.control]);
    await next.waitForLine(RUNNING);
    early.close();
    assert.equal((await old.waitForExit()).code, 0);
    next.kill("SIGTERM");
    assert.equal((await next.waitForExit()).code, 0);
  } finally {
    try {
      early.close();
    } catch { /* closed */ }
  }
});

Deno.test("sockets Deno keeps (io: portable, the status API) are named with the reason, and the new process binds beside them", async () => {
  await using s = await setup();
  await using nginx = await startNginx();
  const port = freeTcpPort();
  const path = await write(
    s,
    "edgenode.yaml",
    config(
      s,
      "scheduler",
      `scheduler:
  io: portable
  services:
    - name: web
      listen: "${LO}:${port}"
      servers:
        - {address: "${LO}:${nginx.port}"}`,
    ),
  );
  await using old = startEdgenode(["--config", path]);
  await old.waitForLine(RUNNING);
  await using next = startEdgenode(["--config", path, "--takeover", s.control]);
  await next.waitForLine(RUNNING);
  assert.equal((await old.waitForExit()).code, 0);
  const said = old.stderrLines.filter((l) => /cannot pass socket/.test(l));
  assert.ok(said.some((l) => l.includes(`addr=${LO}:${port}`) && /io: portable/.test(l)), said.join("\n"));
  assert.ok(
    said.some((l) => l.includes(`addr=${LO}:${s.statusPort}`) && /status API/.test(l)),
    said.join("\n"),
  );
  assert.ok(next.stderrLines.some((l) => /not passed; binding beside the running process/.test(l)));
  const conn = await Deno.connect({ hostname: LO, port });
  assert.equal(await ask(conn), "hello");
  conn.close();
  next.kill("SIGTERM");
  assert.equal((await next.waitForExit()).code, 0);
});

/** Connections the scheduler's service "web" passed to its servers, as /status says (whichever process answers). */
async function webStatus(statusPort: number): Promise<{ connections_total: number } | null> {
  try {
    const web = (await services(statusPort)).web;
    return web ? { connections_total: web.servers.reduce((n, server) => n + server.total, 0) } : null;
  } catch {
    return null;
  }
}

/**
 * The running process's side played by the test through the real protocol (lib/net/fd_channel.ts), so that it can
 * choose when to answer: a new edgenode connects, sends "takeover", and this hands it no socket, saying `readyTimeoutMs`.
 */
function playRunningProcess(
  s: Setup,
  onRequest: (request: unknown) => Promise<void> | void,
  readyTimeoutMs = 60_000,
): { answer: Promise<unknown>; [Symbol.dispose](): void } {
  const listener = ControlListener.open(s.control);
  const stop = new AbortController();
  const answer = (async () => {
    const ch = await listener.accept(AbortSignal.any([stop.signal, AbortSignal.timeout(20_000)]));
    if (!ch) throw new Error("No takeover came");
    try {
      const request = (await ch.receive(10_000)).message;
      await onRequest(request);
      await ch.send({
        v: 1,
        type: "sockets",
        sockets: [],
        last: true,
        unpassable: [],
        pid: Deno.pid,
        ready_timeout_ms: readyTimeoutMs,
      });
      return (await ch.receive(20_000)).message;
    } finally {
      ch.close();
    }
  })();
  return {
    answer,
    [Symbol.dispose]: () => {
      stop.abort();
      listener.close();
    },
  };
}

function relayConfig(s: Setup): string {
  return config(
    s,
    "relay",
    `relay:
  relays:
    - {name: r1, listen: "${LO}:${freeUdpPort()}", targets: ["${LO}:9"]}`,
  );
}

Deno.test("a stop signal to the new process while it starts aborts the takeover: the running process is told to go on", async () => {
  await using s = await setup();
  const path = await write(s, "edgenode.yaml", relayConfig(s));
  const started: { process?: EdgenodeProcess } = {};
  using old = playRunningProcess(s, async () => {
    started.process!.kill("SIGTERM");
    // The signal has no answer to wait for: give the new process's event loop time to take it.
    await new Promise((resolve) => setTimeout(resolve, 500));
  });
  await using next = started.process = startEdgenode(["--config", path, "--takeover", s.control]);
  assert.deepEqual(await old.answer, { v: 1, type: "abort", reason: "stopped by SIGTERM" });
  const ended = await next.waitForExit();
  assert.equal(ended.code, 0, ended.stderr);
  assert.match(ended.stderr, /takeover abandoned: stopped while starting/);
  assert.doesNotMatch(ended.stderr, /msg=running /);
});

Deno.test("a new process that starts after the running one stopped waiting for ready aborts and exits 1", async () => {
  await using s = await setup();
  const path = await write(s, "edgenode.yaml", relayConfig(s));
  // A deadline of 1 ms has passed by the time any start finishes.
  using old = playRunningProcess(s, () => {}, 1);
  await using next = startEdgenode(["--config", path, "--takeover", s.control]);
  const answer = await old.answer as { type: string; reason: string };
  assert.equal(answer.type, "abort");
  assert.match(answer.reason, /after the running process stopped waiting/);
  const ended = await next.waitForExit();
  assert.equal(ended.code, 1, ended.stderr);
  assert.doesNotMatch(ended.stderr, /msg=running /);
});

Deno.test("a new process whose ready gets no draining answer stops and exits 1 rather than serve beside the running one", async () => {
  await using s = await setup();
  const path = await write(s, "edgenode.yaml", relayConfig(s));
  using old = playRunningProcess(s, () => {});
  await using next = startEdgenode(["--config", path, "--takeover", s.control]);
  // The test's "running process" reads "ready" and hangs up without answering.
  assert.deepEqual(await old.answer, { v: 1, type: "ready" });
  const ended = await next.waitForExit();
  assert.equal(ended.code, 1, ended.stderr);
  assert.match(ended.stderr, /did not say it drains/);
  assert.doesNotMatch(ended.stderr, /msg=running /);
});
