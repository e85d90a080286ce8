/** Sockaddr encoding and decoding (lib/net/libc.ts), which both fast paths use for every address they see. */
import assert from "node:assert/strict";
import { readSockaddr, writeSockaddr } from "../../lib/net/libc.ts";

const view = new DataView(new ArrayBuffer(64));

function roundTrip(host: string, port: number, v6: boolean) {
  writeSockaddr(view, 0, { host, port }, v6);
  return readSockaddr(view, 0);
}

Deno.test("sockaddr: IPv4, IPv4 mapped into IPv6 and IPv6 addresses read back as written", () => {
  assert.deepEqual(roundTrip("192.0.2.7", 554, false), { host: "192.0.2.7", port: 554 });
  assert.deepEqual(roundTrip("255.255.255.254", 65535, false), { host: "255.255.255.254", port: 65535 });
  assert.deepEqual(roundTrip("198.51.100.1", 80, true), { host: "198.51.100.1", port: 80 });
  assert.deepEqual(roundTrip("2001:db8::1", 8554, true), { host: "2001:db8::1", port: 8554 });
});

Deno.test("sockaddr: addresses that share a slot of the text cache each read back as themselves", () => {
  // The cache slot is the low byte of a ^ a>>>8 ^ a>>>16: these differ only where the mix cancels out.
  const pairs = [["10.0.1.1", "10.1.0.1"], ["0.0.0.0", "0.1.1.0"], ["127.0.0.1", "127.1.1.1"]];
  for (let round = 0; round < 2; round++) {
    for (const [a, b] of pairs) {
      assert.equal(roundTrip(a, 1, false).host, a);
      assert.equal(roundTrip(b, 1, false).host, b);
      assert.equal(roundTrip(a, 1, true).host, a, "mapped");
    }
  }
});
