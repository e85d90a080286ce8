/**
 * The reflector end to end with real processes: an edgenode relay role with a reflector, two `edgenode probe recv
 * --join` participants, one participant added over the token-protected API, and `edgenode probe send` as source.
 */
import assert from "node:assert/strict";
import type { ProbeReport } from "../../lib/probe/stats.ts";
import { getJson, LISTENING, startEdgenode, tempConfig } from "./_process.ts";

const TOKEN = "e2e-token-0123456789";
const N = 3000;

Deno.test("edgenode reflector delivers a probe stream to joined and API-added participants", async () => {
  await using config = await tempConfig([
    "roles: [relay]",
    "status:",
    `  token: ${TOKEN}`,
    "relay:",
    "  reflectors:",
    "    - name: lecture",
    "      data: 127.0.0.1:0",
    "      registration: 127.0.0.1:0",
    "      allow: [loopback]",
    "",
  ].join("\n"));
  await using node = startEdgenode(["--config", config.path, "--status", "127.0.0.1:0"]);
  const [, data, registration] = await node.waitForLine(
    /msg="reflector listening" reflector=lecture data=(127\.0\.0\.1:\d+) registration=(127\.0\.0\.1:\d+)/,
  );
  const [, statusPort] = await node.waitForLine(LISTENING);
  const api = `http://127.0.0.1:${statusPort}/relay/reflectors/lecture/participants`;

  const recvArgs = ["--count", String(N), "--duration", "20s", "--idle", "3s", "--json"];
  await using joinA = startEdgenode(["probe", "recv", "--join", registration, ...recvArgs]);
  await using joinB = startEdgenode(["probe", "recv", "--join", registration, ...recvArgs]);
  await using added = startEdgenode(["probe", "recv", "--listen", "127.0.0.1:0", ...recvArgs]);
  await joinA.waitForLine(/probe recv: listening on/);
  await joinB.waitForLine(/probe recv: listening on/);
  const [, addedPort] = await added.waitForLine(/probe recv: listening on 127\.0\.0\.1:(\d+)/);

  // The API refuses a change without the token, then takes it with the token.
  const body = JSON.stringify({ address: `127.0.0.1:${addedPort}` });
  const anonymous = await fetch(api, { method: "POST", body });
  assert.equal(anonymous.status, 401);
  await anonymous.body?.cancel();
  const post = await fetch(api, { method: "POST", body, headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(post.status, 201);
  assert.equal((await post.json()).persisted, false);

  const participants = (await (await fetch(api)).json()) as { origin: string }[];
  assert.deepEqual(participants.map((p) => p.origin).sort(), ["api", "join", "join"]);

  const send = await startEdgenode([
    "probe",
    "send",
    "--to",
    data,
    "--rate",
    "5000",
    "--count",
    String(N),
    "--json",
  ])
    .waitForExit();
  assert.equal(send.code, 0, send.stderr);
  assert.equal(JSON.parse(send.stdout).sent, N);

  for (const receiver of [joinA, joinB, added]) {
    const result = await receiver.waitForExit();
    assert.equal(result.code, 0, result.stderr);
    const report: ProbeReport = JSON.parse(result.stdout);
    assert.equal(report.received, N, "every datagram reached every participant");
    assert.equal(report.lost, 0);
    assert.equal(report.duplicates, 0);
  }

  const status = await getJson(`http://127.0.0.1:${statusPort}/status`);
  const reflector = (status.roles as { relay: { reflectors: Record<string, Record<string, unknown>> } }).relay
    .reflectors.lecture;
  assert.equal(reflector.confirms as number >= 2, true);
  assert.equal((reflector.sockets as { data: { rx_packets: number } }).data.rx_packets, N);
  assert.deepEqual(reflector.threads, { media: true }, "the data path runs on a thread of its own");
  const sent = (reflector.participants as { sent: number }[]).map((p) => p.sent);
  assert.deepEqual(sent, sent.map(() => N), "each participant was sent the whole stream");
  assert.equal(
    (reflector.sockets as { registration: { tx_packets: number } }).registration.tx_packets >=
      N * sent.length,
    true,
    "data to participants leaves from the registration socket and is counted there",
  );

  const del = await fetch(`${api}/127.0.0.1:${addedPort}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(del.status, 200);
  await del.body?.cancel();
  node.kill("SIGTERM");
  assert.equal((await node.waitForExit()).code, 0);
});

Deno.test("edgenode probe recv --join exits 1 with one line when no reflector answers", async () => {
  const result = await startEdgenode(["probe", "recv", "--join", "127.0.0.1:9", "--quiet"]).waitForExit();
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    /^edgenode probe: Cannot join the reflector at 127\.0\.0\.1:9: no answer within 5 s\n$/m,
  );
});
