import assert from "node:assert/strict";
import {
  parseProxyHeader,
  PROXY_V1_MAX_LENGTH,
  PROXY_V2_SIGNATURE,
  proxyHeader,
  ProxyHeaderError,
  proxyHeaderLocal,
} from "../../lib/scheduler/proxy_protocol.ts";

const text = (s: string) => new TextEncoder().encode(s);
const ascii = (b: Uint8Array) => new TextDecoder().decode(b);
const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((h) => parseInt(h, 16)));
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, (off += p.length) - p.length);
  return out;
};
const SIG = "0d0a0d0a000d0a515549540a";

Deno.test("PROXY_V2_SIGNATURE is \\r\\n\\r\\n\\0\\r\\nQUIT\\n", () => {
  assert.equal(ascii(PROXY_V2_SIGNATURE), "\r\n\r\n\0\r\nQUIT\n");
});

Deno.test("proxyHeader v1 writes the spec's TCP4 line", () => {
  const h = proxyHeader(1, { host: "192.168.0.1", port: 56324 }, { host: "192.168.0.11", port: 443 });
  assert.equal(ascii(h), "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
});

Deno.test("proxyHeader v1 writes TCP6 in canonical form", () => {
  const h = proxyHeader(1, { host: "2001:DB8:0:0:0:0:0:1", port: 1234 }, { host: "::1", port: 80 });
  assert.equal(ascii(h), "PROXY TCP6 2001:db8::1 ::1 1234 80\r\n");
});

Deno.test("proxyHeader v2 writes exact bytes for IPv4", () => {
  const h = proxyHeader(2, { host: "192.168.0.1", port: 56324 }, { host: "192.168.0.11", port: 443 });
  assert.deepEqual(h, hex(`${SIG} 21 11 000c c0a80001 c0a8000b dc04 01bb`));
});

Deno.test("proxyHeader v2 writes exact bytes for IPv6", () => {
  const h = proxyHeader(2, { host: "2001:db8::1", port: 1 }, { host: "::1", port: 65535 });
  assert.deepEqual(
    h,
    hex(`${SIG} 21 21 0024 20010db8000000000000000000000001 00000000000000000000000000000001 0001 ffff`),
  );
});

Deno.test("proxyHeaderLocal writes UNKNOWN (v1) and LOCAL with no addresses (v2)", () => {
  assert.equal(ascii(proxyHeaderLocal(1)), "PROXY UNKNOWN\r\n");
  assert.deepEqual(proxyHeaderLocal(2), hex(`${SIG} 20 00 0000`));
  const parsed = parseProxyHeader(proxyHeaderLocal(2))!;
  assert.equal(parsed.command, "local");
  assert.equal(parsed.source, undefined);
  assert.equal(parseProxyHeader(proxyHeaderLocal(1))!.protocol, "unknown");
});

Deno.test("proxyHeader unmaps IPv4-mapped IPv6 so a dual-stack listener gives TCP4", () => {
  const h = proxyHeader(1, { host: "::ffff:192.0.2.1", port: 5000 }, { host: "::FFFF:c000:020a", port: 80 });
  assert.equal(ascii(h), "PROXY TCP4 192.0.2.1 192.0.2.10 5000 80\r\n");
  const h2 = proxyHeader(2, { host: "::ffff:192.0.2.1", port: 5000 }, { host: "192.0.2.10", port: 80 });
  assert.equal(h2[13], 0x11);
  assert.deepEqual(h2, proxyHeader(2, { host: "192.0.2.1", port: 5000 }, { host: "192.0.2.10", port: 80 }));
});

Deno.test("proxyHeader maps the IPv4 end when the other is IPv6", () => {
  const h = proxyHeader(1, { host: "192.0.2.1", port: 5000 }, { host: "2001:db8::10", port: 80 });
  assert.equal(ascii(h), "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::10 5000 80\r\n");
  const h2 = proxyHeader(2, { host: "2001:db8::1", port: 5000 }, { host: "::ffff:10.0.0.1", port: 80 });
  assert.equal(h2[13], 0x21);
  assert.deepEqual(h2.subarray(32, 48), hex("00000000000000000000ffff0a000001"));
  const parsed = parseProxyHeader(h2)!;
  assert.deepEqual(parsed.destination, { host: "::ffff:10.0.0.1", port: 80 });
});

Deno.test("proxyHeader refuses host names, bad ports and versions", () => {
  const ok = { host: "127.0.0.1", port: 1 };
  assert.throws(
    () => proxyHeader(1, { host: "example.com", port: 1 }, ok),
    /source "example.com" is not an IP/,
  );
  assert.throws(() => proxyHeader(2, ok, { host: "10.0.0.256", port: 1 }), /destination "10.0.0.256"/);
  assert.throws(() => proxyHeader(1, { host: "127.0.0.1", port: 65536 }, ok), RangeError);
  assert.throws(() => proxyHeader(1, { host: "127.0.0.1", port: -1 }, ok), RangeError);
  assert.throws(() => proxyHeader(3 as 2, ok, ok), /version must be 1 or 2/);
});

const EXAMPLES: [string, string, number, string, number][] = [
  ["v4", "10.1.2.3", 40000, "10.9.8.7", 8080],
  ["v4 zeros", "0.0.0.0", 0, "255.255.255.255", 65535],
  ["v6", "2001:db8:1:2:3:4:5:6", 1, "fe80::1", 2],
  ["v6 loopback", "::1", 33000, "::", 443],
  ["mixed", "::ffff:1.2.3.4", 1000, "2001:db8::1", 2000],
];

for (const version of [1, 2] as const) {
  for (const [name, sh, sp, dh, dp] of EXAMPLES) {
    Deno.test(`parseProxyHeader reads back proxyHeader v${version} (${name}), data after it untouched`, () => {
      const header = proxyHeader(version, { host: sh, port: sp }, { host: dh, port: dp });
      const parsed = parseProxyHeader(concat(header, text("GET / HTTP/1.0\r\n\r\n")))!;
      assert.equal(parsed.version, version);
      assert.equal(parsed.command, "proxy");
      assert.equal(parsed.protocol, sh.includes(":") || dh.includes(":") ? "tcp6" : "tcp4");
      assert.deepEqual(parsed.source, { host: sh, port: sp });
      assert.deepEqual(parsed.destination, { host: dh, port: dp });
      assert.equal(parsed.length, header.length);
      assert.equal(parsed.tlvs.length, 0);
    });

    Deno.test(`parseProxyHeader asks for more at every split of a v${version} header (${name})`, () => {
      const header = proxyHeader(version, { host: sh, port: sp }, { host: dh, port: dp });
      for (let i = 0; i < header.length; i++) {
        assert.equal(parseProxyHeader(header.subarray(0, i)), null, `at ${i}`);
      }
      assert.notEqual(parseProxyHeader(header), null);
    });
  }
}

Deno.test("parseProxyHeader reads the longest v1 line (107 bytes)", () => {
  const h = proxyHeader(1, { host: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", port: 65535 }, {
    host: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
    port: 65535,
  });
  assert.equal(h.length, 104);
  const unknown = text(`PROXY UNKNOWN ${"x".repeat(PROXY_V1_MAX_LENGTH - 16)}\r\n`);
  assert.equal(unknown.length, PROXY_V1_MAX_LENGTH);
  assert.equal(parseProxyHeader(unknown)!.length, PROXY_V1_MAX_LENGTH);
  assert.equal(parseProxyHeader(h)!.length, 104);
});

Deno.test("parseProxyHeader v2 keeps TLV bytes and reads UDP and UNIX families", () => {
  const tlv = hex("04 0002 abcd");
  const withTlv = hex(`${SIG} 21 11 0011 7f000001 7f000002 0001 0002 040002abcd`);
  const parsed = parseProxyHeader(withTlv)!;
  assert.deepEqual(parsed.tlvs, tlv);
  assert.equal(parsed.length, 16 + 17);
  assert.deepEqual(parsed.source, { host: "127.0.0.1", port: 1 });

  const udp = parseProxyHeader(hex(`${SIG} 21 12 000c 7f000001 7f000002 0001 0002`))!;
  assert.equal(udp.protocol, "udp4");
  const unix = parseProxyHeader(concat(hex(`${SIG} 21 31 00d8`), new Uint8Array(216)))!;
  assert.equal(unix.protocol, "unix");
  assert.equal(unix.source, undefined);
  // LOCAL with addresses: the addresses are skipped, the real endpoints apply.
  const local = parseProxyHeader(hex(`${SIG} 20 11 000c 7f000001 7f000002 0001 0002`))!;
  assert.equal(local.command, "local");
  assert.equal(local.source, undefined);
  assert.equal(local.length, 28);
});

const MALFORMED: [string, Uint8Array, RegExp, number][] = [
  ["an HTTP request", text("GET / HTTP/1.1\r\n"), /Not a PROXY protocol header/, 0],
  ["lower case", text("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), /Not a PROXY/, 0],
  ["a typo in PROXY", text("PROXI TCP4"), /must start with "PROXY "/, 4],
  ["LF without CR", text("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), /Unexpected byte 0x0a/, 30],
  ["CR without LF", text("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), /CR not followed by LF/, 31],
  ["an unknown protocol", text("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), /Unknown protocol "UDP4"/, 6],
  ["a bad IPv4", text("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), /"1.2.3.256" is not a valid IPv4/, 11],
  ["IPv6 under TCP4", text("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), /"::1" is not a valid IPv4/, 11],
  ["IPv4 under TCP6", text("PROXY TCP6 ::1 5.6.7.8 1 2\r\n"), /"5.6.7.8" is not a valid IPv6/, 15],
  ["a port too big", text("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), /"65536" is not a valid port/, 27],
  ["a leading zero", text("PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n"), /"080" is not a valid port/, 29],
  ["a double space", text("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), /separated by single spaces/, 11],
  ["a trailing space", text("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), /separated by single spaces/, 31],
  ["a missing port", text("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), /got 5/, 28],
  ["an extra field", text("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), /got 7/, 30],
  ["a line past 107 bytes", text(`PROXY UNKNOWN ${"x".repeat(100)}`), /longer than 107/, 107],
  ["a CR at byte 107", text(`PROXY UNKNOWN ${"x".repeat(92)}\r`), /longer than 107/, 107],
  ["a control byte", text("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"), /Unexpected byte 0x09/, 18],
  ["a bad v2 signature", hex("0d0a0d0a000d0a5155495454"), /Bad version 2 signature/, 11],
  ["v2 signature cut by other bytes", hex("0d0a0d0a01"), /Bad version 2 signature/, 4],
  ["version 1 in a v2 block", hex(`${SIG} 11 11 000c`), /Unsupported version 1/, 12],
  ["an unknown command", hex(`${SIG} 22`), /Unknown command 2/, 12],
  ["an unknown family", hex(`${SIG} 21 41`), /Unknown address family 4/, 13],
  ["an unknown transport", hex(`${SIG} 21 13`), /Unknown transport protocol 3/, 13],
  [
    "IPv4 block too short",
    hex(`${SIG} 21 11 0008 7f000001 7f000002`),
    /Length 8 is too short .*12 bytes/,
    14,
  ],
  ["IPv6 block too short", hex(`${SIG} 21 21 000c`), /Length 12 is too short .*36 bytes/, 14],
];

for (const [name, bytes, message, offset] of MALFORMED) {
  Deno.test(`parseProxyHeader rejects ${name}`, () => {
    assert.throws(() => parseProxyHeader(bytes), (e: unknown) => {
      assert.ok(e instanceof ProxyHeaderError, String(e));
      assert.match(e.message, message);
      assert.equal(e.offset, offset);
      return true;
    });
  });
}

Deno.test("parseProxyHeader waits on an empty or partial header and fails at the first wrong byte", () => {
  assert.equal(parseProxyHeader(new Uint8Array(0)), null);
  assert.equal(parseProxyHeader(text("PRO")), null);
  assert.equal(parseProxyHeader(hex(`${SIG} 21 11 000c 7f00`)), null);
  assert.throws(() => parseProxyHeader(text("PRX")), ProxyHeaderError);
});
