import assert from "node:assert/strict";
import { openUdp } from "../../lib/net/udp.ts";
import { openFastUdp } from "../../lib/net/udp_fast.ts";
import { openPortableUdp } from "../../lib/net/udp_portable.ts";
import { collect, udpContract } from "./udp_contract.ts";

const openFast = (
  addr: Parameters<typeof openPortableUdp>[0],
  options?: Parameters<typeof openPortableUdp>[1],
) => {
  const s = openFastUdp(addr, options);
  assert.ok(s, "the fast path needs Linux and --allow-ffi");
  return s;
};

udpContract("fast", openFast, openPortableUdp);

Deno.test("fast socket returns many queued datagrams in one receive, up to its batch size", async () => {
  const a = openFast({ host: "127.0.0.1", port: 0 });
  const b = openFast({ host: "127.0.0.1", port: 0 }, { batch: 16 });
  try {
    a.send(Array.from({ length: 40 }, (_, i) => new Uint8Array([i])), a.destinations([b.local]));
    const first = await b.receive();
    assert.ok(first);
    assert.equal(first.count, 16, "a full batch when 40 are queued");
    await collect(b, 24);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("openUdp takes the fast path by default where FFI is allowed", async () => {
  const s = openUdp({ host: "127.0.0.1", port: 0 });
  try {
    assert.equal(s.impl, "fast");
  } finally {
    await s.close();
  }
  const p = openUdp({ host: "127.0.0.1", port: 0 }, { impl: "portable" });
  assert.equal(p.impl, "portable");
  await p.close();
});
