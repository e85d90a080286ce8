/**
 * The four-city test bed itself: namespaces with their own stacks, joined with a delay per pair, and gone after
 * dispose. Runs as root (as CI does).
 */
import assert from "node:assert/strict";
import { CITIES, CITY_DELAYS_MS, NetnsBed, sweepStaleNamespaces } from "../_support/netns.ts";

/** Inside pilsen: receives `count` datagrams and prints each one's one-way delay (sender's stamp to arrival), ms. */
const RECEIVER = `
const socket = Deno.listenDatagram({ transport: "udp", hostname: Deno.args[0], port: 7777 });
console.log("listening");
for (let i = 0; i < Number(Deno.args[1]); i++) {
  const [data] = await socket.receive();
  const now = performance.timeOrigin + performance.now();
  const sent = new DataView(data.buffer, data.byteOffset).getFloat64(0);
  console.log((now - sent).toFixed(3));
}
socket.close();
`;

/** Inside brno: sends `count` stamped datagrams to the receiver, 20 ms apart. */
const SENDER = `
const socket = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
const to = { transport: "udp", hostname: Deno.args[0], port: 7777 };
for (let i = 0; i < Number(Deno.args[1]); i++) {
  const data = new Uint8Array(100);
  new DataView(data.buffer).setFloat64(0, performance.timeOrigin + performance.now());
  await socket.send(data, to);
  await new Promise((r) => setTimeout(r, 20));
}
socket.close();
`;

/** Starts the receiver in `to`, sends `count` datagrams from `from`, returns each one's one-way delay in ms. */
async function oneWayDelays(bed: NetnsBed, from: string, to: string, count: number): Promise<number[]> {
  const deno = Deno.execPath();
  const address = bed.node(to).address;
  const receiver = bed.spawn(to, deno, ["eval", "--unstable-net", RECEIVER, address, String(count)], {
    stdout: "piped",
    stderr: "piped",
  });
  const out = receiver.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("listening\n")) {
    const { value, done } = await out.read();
    assert.ok(!done, `the receiver ended: ${text}`);
    text += value;
  }
  const sent = await bed.run(from, deno, ["eval", "--unstable-net", SENDER, address, String(count)]);
  assert.equal(sent.code, 0, sent.stderr);
  for (;;) {
    const { value, done } = await out.read();
    if (done) break;
    text += value;
  }
  assert.equal((await receiver.status).code, 0);
  return text.split("\n").slice(1).filter(Boolean).map(Number);
}

Deno.test("NetnsBed joins four cities with the configured delay and leaves no namespace behind", async () => {
  const stale = await sweepStaleNamespaces();
  if (stale.length) console.log(`removed namespaces of an earlier crashed run: ${stale.join(", ")}`);
  const count = 10;
  let prefix = "";
  let counts: Record<string, number> | undefined;
  {
    await using bed = await NetnsBed.create({ names: CITIES, delaysMs: CITY_DELAYS_MS });
    prefix = bed.prefix;
    assert.equal((await bed.existing()).length, 4);
    // Each namespace has its own stack: its loopback is up, and its only other address is its own.
    const addrs = await bed.run("brno", "ip", ["-4", "-o", "addr"]);
    assert.match(addrs.stdout, /inet 127\.0\.0\.1\/8/);
    assert.match(addrs.stdout, new RegExp(`inet ${bed.node("brno").address.replaceAll(".", "\\.")}/24`));

    const delays = await oneWayDelays(bed, "brno", "pilsen", count);
    assert.equal(delays.length, count, "every datagram arrived");
    const configured = CITY_DELAYS_MS["brno-pilsen"];
    const sorted = [...delays].sort((a, b) => a - b);
    console.log(
      `brno -> pilsen one-way delay over ${count} datagrams, configured ${configured} ms: ` +
        `min ${sorted[0].toFixed(3)} ms, median ${sorted[count >> 1].toFixed(3)} ms, max ${
          sorted.at(-1)!.toFixed(3)
        } ms`,
    );
    for (const d of delays) {
      assert.ok(d > configured, `one-way delay ${d} ms above the configured ${configured} ms`);
    }
    await bed[Symbol.asyncDispose]();
    assert.deepEqual(await bed.existing(), []);
    counts = await bed.delayLineCounts();
  }
  console.log(`delay line: ${JSON.stringify(counts)}`);
  assert.ok((counts?.forwarded ?? 0) >= count);
  const left = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output();
  assert.ok(!new TextDecoder().decode(left.stdout).includes(prefix), "no namespace of this run is left");
});

Deno.test("NetnsBed with link bridge joins the namespaces at kernel speed and removes its hub too", async () => {
  let prefix = "";
  {
    await using bed = await NetnsBed.create({ names: ["brno", "pilsen"], link: "bridge" });
    prefix = bed.prefix;
    assert.deepEqual((await bed.existing()).sort(), [`${prefix}brno`, `${prefix}hub`, `${prefix}pilsen`]);
    const delays = await oneWayDelays(bed, "brno", "pilsen", 3);
    assert.equal(delays.length, 3, "every datagram arrived");
    console.log(`brno -> pilsen over the bridge: ${delays.map((d) => d.toFixed(3)).join(", ")} ms`);
  }
  const left = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output();
  assert.ok(!new TextDecoder().decode(left.stdout).includes(prefix), "no namespace of this run is left");
});
