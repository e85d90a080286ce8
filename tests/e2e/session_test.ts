/**
 * A DiProNN session end to end on one node, as the report's behaviour tests ran it (footnote 5): the Appendix A
 * program with the transcoder and syncers replaced by forwarders, uploaded through the session API, carries a video
 * and an audio RTP stream (with their RTCP, use_RTP) from DIPRONN_INPUT(10000)/(10002) to two savers and two
 * reflectors. The two reflectors are in the VM group my_VM1, so their participant tables run in a worker isolate
 * of their own, while the main isolate keeps their registration sockets and sends their data. Two participants join each
 * reflector with the join protocol. Every datagram sent must reach every participant and both files, and the per-AP
 * counters must say so.
 */
import { until } from "../_support/until.ts";
import assert from "node:assert/strict";
import { readPcap } from "../../lib/media/pcap.ts";
import { openUdp, openUdpPair, type UdpSocket } from "../../lib/net/udp.ts";
import { LISTENING, startEdgenode, tempConfig } from "./_process.ts";

const TOKEN = "e2e-token-0123456789";
const LO = "127.0.0.1";
const N = 400; // RTP datagrams per stream
const R = 20; // RTCP datagrams per stream
const enc = new TextEncoder();
const dec = new TextDecoder();

function rtp(ssrc: number, pt: number, seq: number): Uint8Array {
  const d = new Uint8Array(12 + 160);
  const v = new DataView(d.buffer);
  d[0] = 0x80;
  d[1] = pt;
  v.setUint16(2, seq);
  v.setUint32(4, seq * 90);
  v.setUint32(8, ssrc);
  d.fill(seq & 0xff, 12);
  return d;
}

/** An RTCP receiver report with no report blocks: 8 bytes. */
function rtcp(ssrc: number): Uint8Array {
  const d = new Uint8Array(8);
  const v = new DataView(d.buffer);
  d[0] = 0x80;
  d[1] = 201;
  v.setUint16(2, 1);
  v.setUint32(4, ssrc);
  return d;
}

/** A participant: an RTP socket on an even-or-not port p and its RTCP socket on p + 1. */
class Participant {
  readonly media = new Map<number, Set<number>>();
  rtcp = 0;
  readonly #loops: Promise<void>[] = [];
  private constructor(readonly rtp: UdpSocket, readonly rtcpSocket: UdpSocket) {}

  static open(): Participant {
    return new Participant(...openUdpPair(LO));
  }

  /** JOIN, answer the CHALLENGE, wait for WELCOME (then count what arrives). */
  async join(registration: number): Promise<void> {
    const reg = this.rtp.destinations([{ host: LO, port: registration }]);
    this.rtp.send([enc.encode("EDGENODE-JOIN".padEnd(64))], reg);
    for (;;) {
      const batch = await this.rtp.receive();
      assert.ok(batch, "socket closed before WELCOME");
      const text = dec.decode(batch.data(0));
      const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})$/.exec(text);
      if (challenge) this.rtp.send([enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)], reg);
      else if (text.startsWith("EDGENODE-WELCOME")) break;
    }
    this.#loops.push(this.#count());
    this.#loops.push(this.#countRtcp());
  }

  async #count(): Promise<void> {
    for (;;) {
      const batch = await this.rtp.receive();
      if (!batch) return;
      for (let i = 0; i < batch.count; i++) {
        const d = batch.data(i);
        const ssrc = new DataView(d.buffer, d.byteOffset).getUint32(8);
        const seq = (d[2] << 8) | d[3];
        if (!this.media.has(ssrc)) this.media.set(ssrc, new Set());
        this.media.get(ssrc)!.add(seq);
      }
    }
  }

  async #countRtcp(): Promise<void> {
    for (;;) {
      const batch = await this.rtcpSocket.receive();
      if (!batch) return;
      this.rtcp += batch.count;
    }
  }

  received(ssrc: number): number {
    return this.media.get(ssrc)?.size ?? 0;
  }

  async close(): Promise<void> {
    await this.rtp.close();
    await this.rtcpSocket.close();
    await Promise.all(this.#loops);
  }
}

Deno.test("edgenode node runs the Appendix A session: every datagram reaches every participant and both files", async () => {
  const fixture = await Deno.readTextFile(
    new URL("../fixtures/appendix_a_forwarders.dipronn", import.meta.url),
  );
  // The participants of this test are on loopback, which reflectors refuse unless allowed.
  const program = fixture.replaceAll(
    "outputs = out(DIPRONN_OUTPUT),",
    "allow = loopback;\n        outputs = out(DIPRONN_OUTPUT),",
  );
  assert.notEqual(program, fixture);
  await using config = await tempConfig("");
  const dataDir = config.path.replace(/[^/]+$/, "data");
  await Deno.writeTextFile(
    config.path,
    ["roles: [node]", "status:", `  token: ${TOKEN}`, "node:", `  bind: ${LO}`, `  data_dir: ${dataDir}`, ""]
      .join(
        "\n",
      ),
  );
  await using node = startEdgenode(["--config", config.path, "--status", `${LO}:0`]);
  const [, statusPort] = await node.waitForLine(LISTENING);
  const api = `http://${LO}:${statusPort}/node/sessions`;
  const auth = { authorization: `Bearer ${TOKEN}` };

  const upload = await fetch(`${api}?file=appendix_a.dipronn`, {
    method: "POST",
    body: program,
    headers: auth,
  });
  const started = await upload.json();
  assert.equal(upload.status, 201, JSON.stringify(started));
  assert.equal(started.started, "synchro_infrastructure.first_tests");

  const high = [Participant.open(), Participant.open()];
  const low = [Participant.open(), Participant.open()];
  const source = openUdp({ host: LO, port: 0 });
  try {
    for (const p of high) await p.join(12345);
    for (const p of low) await p.join(12354);

    const to = (port: number) => source.destinations([{ host: LO, port }]);
    const [video, audio, videoRtcp, audioRtcp] = [to(10000), to(10002), to(10001), to(10003)];
    for (let seq = 0; seq < N; seq += 20) {
      source.send(Array.from({ length: 20 }, (_, i) => rtp(0x1111, 33, seq + i)), video);
      source.send(Array.from({ length: 20 }, (_, i) => rtp(0x2222, 11, seq + i)), audio);
      if (seq / 20 < R) {
        source.send([rtcp(0x1111)], videoRtcp);
        source.send([rtcp(0x2222)], audioRtcp);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    const all = [...high, ...low];
    await until(
      "every participant to receive both streams",
      () => all.every((p) => p.received(0x1111) === N && p.received(0x2222) === N && p.rtcp === 2 * R),
    );
    for (const p of all) {
      assert.equal(p.received(0x1111), N);
      assert.equal(p.received(0x2222), N);
      assert.equal(p.rtcp, 2 * R);
    }

    // Per-AP counters: datagrams in = RTP + RTCP of the streams each AP carries. The reflectors run in my_VM1's
    // worker, whose counters reach /status in snapshots (every 250 ms): poll until they caught up, within a bound.
    type ApJson = {
      name: string;
      vm: string | null;
      inputs: { packets: number }[];
      records?: number;
      reflector?: { participants: unknown[] };
    };
    let status: { aps: ApJson[]; vms: Record<string, unknown>[] } = { aps: [], vms: [] };
    const ap = (name: string) => status.aps.find((a) => a.name === name)!;
    const inTotal = (name: string) => ap(name).inputs.reduce((n, p) => n + p.packets, 0);
    await until("the VM group's counters in /status", async () => {
      status = await (await fetch(`${api}/synchro_infrastructure.first_tests`)).json();
      return ["Reflector_high", "Reflector_low"].every((name) => inTotal(name) === 2 * (N + R));
    });
    assert.equal(status.vms.length, 1);
    assert.equal(status.vms[0].name, "my_VM1");
    assert.equal(status.vms[0].state, "running");
    assert.equal(status.vms[0].isolate, "worker");
    // The reflectors' sockets stay in the main isolate (their tables are in the worker): no network for the VM.
    assert.deepEqual(status.vms[0].permissions, { net: false, ffi: false, read: false, write: false });
    assert.equal(ap("Reflector_high").vm, "my_VM1");
    assert.equal(ap("Saver_high").vm, null);
    assert.equal(inTotal("Dup_V"), N + R);
    assert.equal(inTotal("Dup_A"), N + R);
    for (const name of ["Sync_high", "Sync_low", "Dup_high", "Dup_low", "Saver_high", "Saver_low"]) {
      assert.equal(inTotal(name), 2 * (N + R), name);
    }
    assert.equal(inTotal("Transcode"), N + R);
    assert.equal(ap("Saver_high").records, 2 * (N + R));
    assert.equal(ap("Reflector_high").reflector?.participants.length, 2);
    assert.equal(ap("Reflector_low").reflector?.participants.length, 2);

    // Stopping the session flushes the savers; both files hold every datagram.
    const stop = await fetch(`${api}/synchro_infrastructure.first_tests`, {
      method: "DELETE",
      headers: auth,
    });
    assert.equal(stop.status, 200);
    await stop.body?.cancel();
    for (const file of ["stream_high.dump", "stream_low.dump"]) {
      const capture = readPcap(await Deno.readFile(`${dataDir}/${file}`));
      assert.equal(capture.truncated, false);
      const media = capture.records.filter((r) => r.to.port === 5004);
      const control = capture.records.filter((r) => r.to.port === 5005);
      assert.equal(media.length, 2 * N, file);
      assert.equal(control.length, 2 * R, file);
      assert.equal(new Set(media.map((r) => `${r.data[11]}:${(r.data[2] << 8) | r.data[3]}`)).size, 2 * N);
    }
  } finally {
    await source.close();
    for (const p of [...high, ...low]) await p.close();
  }
});

Deno.test("the session API refuses a program over the node's budgets, naming the budget, the excess and the place", async () => {
  await using config = await tempConfig("");
  const dataDir = config.path.replace(/[^/]+$/, "data");
  await Deno.writeTextFile(
    config.path,
    [
      "roles: [node]",
      "status:",
      `  token: ${TOKEN}`,
      "node:",
      `  bind: ${LO}`,
      `  data_dir: ${dataDir}`,
      "  max_sends_per_datagram: 3",
      "",
    ].join("\n"),
  );
  await using node = startEdgenode(["--config", config.path, "--status", `${LO}:0`]);
  const [, statusPort] = await node.waitForLine(LISTENING);
  const api = `http://${LO}:${statusPort}/node/sessions`;
  const upload = async (file: string, body: string) => {
    const response = await fetch(`${api}?file=${file}`, {
      method: "POST",
      body,
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    return { status: response.status, json: await response.json() };
  };
  const fan = [
    "Project fan;",
    `{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(7000));`,
    `  outputs = a(DIPRONN_OUTPUT("192.0.2.1:5004")), b(DIPRONN_OUTPUT("192.0.2.2:5004")),`,
    `            c(DIPRONN_OUTPUT("192.0.2.3:5004")); }`,
  ].join("\n");
  const refused = await upload("fan.dipronn", fan);
  assert.equal(refused.status, 400, JSON.stringify(refused.json));
  assert.deepEqual(refused.json.errors.map((e: { text: string }) => e.text), [
    "fan.dipronn:2:56: Budget sends per datagram: a datagram into D.in (DIPRONN_INPUT(7000)) leads to 4 sends " +
    "(deliveries to APs and DIPRONN_OUTPUT datagrams), 1 over the node's 3 (node.max_sends_per_datagram); " +
    "duplicators multiply",
  ]);
  // The default node refuses DIPRONN_OUTPUT to itself.
  const loop = await upload(
    "loop.dipronn",
    fan.replace("192.0.2.1:5004", `${LO}:5004`).replace(/, b\(.*\n.*; \}/, "; }"),
  );
  assert.equal(loop.status, 400, JSON.stringify(loop.json));
  assert.match(
    loop.json.errors[0].text,
    /^loop\.dipronn:3:15: DIPRONN_OUTPUT\("127\.0\.0\.1:5004"\) from D goes to the node itself/,
  );
  const list = await fetch(api);
  assert.deepEqual(await list.json(), []);
});
