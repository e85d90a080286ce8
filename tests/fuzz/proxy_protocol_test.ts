/**
 * Property tests of the PROXY protocol reader, which a server behind the scheduler (and the tests' own backends)
 * feeds with the first bytes of a connection: any bytes give null (read more), a header, or a ProxyHeaderError; a
 * header read in pieces reads the same as whole, bytes after it never change it, and every header the writer makes
 * reads back to its endpoints.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ipv6Bytes, isIPv4 } from "../../lib/net/address.ts";
import {
  type ParsedProxyHeader,
  parseProxyHeader,
  PROXY_V1_MAX_LENGTH,
  PROXY_V2_SIGNATURE,
  proxyHeader,
  ProxyHeaderError,
  proxyHeaderLocal,
} from "../../lib/scheduler/proxy_protocol.ts";
import { nearBytes, onlyThrows, params } from "./_fuzz.ts";

const ipv4 = fc.ipV4();
const ipv6 = fc.oneof(fc.ipV6(), ipv4.map((a) => `::ffff:${a}`));
const hostPort = (host: fc.Arbitrary<string>) =>
  fc.record({ host, port: fc.integer({ min: 0, max: 65535 }) });
const anyHost = fc.oneof(ipv4, ipv6);
const version = fc.constantFrom(1 as const, 2 as const);

const written = fc.oneof(
  fc.tuple(version, hostPort(anyHost), hostPort(anyHost)).map(([v, s, d]) => proxyHeader(v, s, d)),
  version.map(proxyHeaderLocal),
);
const textual = fc.array(
  fc.constantFrom(
    "PROXY",
    "TCP4",
    "TCP6",
    "UNKNOWN",
    "UDP4",
    "1.2.3.4",
    "::1",
    "65535",
    "65536",
    "01",
    "0",
    " ",
    "\r",
  ),
  { maxLength: 8 },
).map((w) => new TextEncoder().encode(w.join(" ") + "\r\n"));
const v2ish = fc.tuple(
  fc.uint8Array({ minLength: 4, maxLength: 60 }),
  fc.nat({ max: 255 }),
  fc.nat({ max: 255 }),
)
  .map(([rest, verCmd, famProto]) => {
    const out = new Uint8Array(12 + 2 + rest.length);
    out.set(PROXY_V2_SIGNATURE);
    out[12] = verCmd;
    out[13] = famProto;
    out.set(rest, 14);
    return out;
  });
const input = nearBytes(fc.oneof(written, textual, v2ish), 300);

function parse(bytes: Uint8Array): ParsedProxyHeader | null | "error" {
  const r = onlyThrows(() => parseProxyHeader(bytes), ProxyHeaderError);
  return r === undefined ? "error" : r;
}

Deno.test("parseProxyHeader gives null, a header or a ProxyHeaderError for any bytes", () => {
  fc.assert(
    fc.property(input, (bytes) => {
      const r = parse(bytes);
      if (r && r !== "error") {
        assert.ok(r.length > 0 && r.length <= bytes.length, "a header lies within the bytes read");
        if (r.version === 1) assert.ok(r.length <= PROXY_V1_MAX_LENGTH);
      }
    }),
    params(4000),
  );
});

Deno.test("parseProxyHeader reads a longer input the same way: a header stays, an error stays", () => {
  fc.assert(
    fc.property(input, fc.uint8Array({ maxLength: 40 }), (bytes, more) => {
      const longer = new Uint8Array(bytes.length + more.length);
      longer.set(bytes);
      longer.set(more, bytes.length);
      const first = parse(bytes);
      const second = parse(longer);
      if (first === "error") assert.equal(second, "error", "bytes that cannot become a header never do");
      else if (first) assert.deepEqual(second, first, "bytes after a header do not change it");
    }),
    params(4000),
  );
});

Deno.test("parseProxyHeader reads every header proxyHeader writes, and nothing before its last byte", () => {
  fc.assert(
    fc.property(version, hostPort(anyHost), hostPort(anyHost), (v, src, dst) => {
      const bytes = proxyHeader(v, src, dst);
      for (let n = 0; n < bytes.length; n++) assert.equal(parse(bytes.subarray(0, n)), null, `${n} bytes`);
      const r = parse(bytes);
      assert.ok(r && r !== "error");
      assert.equal(r.version, v);
      assert.equal(r.length, bytes.length);
      assert.equal(r.command, "proxy");
      // The reader reports what is on the wire: compare as addresses (mapped IPv4 is written as IPv4).
      assert.deepEqual(addressOf(r.source!.host), addressOf(src.host));
      assert.deepEqual(addressOf(r.destination!.host), addressOf(dst.host));
      assert.equal(r.source!.port, src.port);
      assert.equal(r.destination!.port, dst.port);
    }),
    params(2000),
  );
});

/** An address as its 16 IPv6 bytes (IPv4 mapped), so texts of one address compare equal. */
function addressOf(host: string): number[] {
  return [...ipv6Bytes(isIPv4(host) ? `::ffff:${host}` : host)];
}
