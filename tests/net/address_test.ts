import assert from "node:assert/strict";
import { formatHostPort, isHostName, isIPv4, isIPv6, parseHostPort } from "../../lib/net/address.ts";

Deno.test("isIPv4 accepts dotted quads of 0..255", () => {
  for (const text of ["0.0.0.0", "127.0.0.1", "10.10.10.10", "255.255.255.255", "192.168.0.1"]) {
    assert.equal(isIPv4(text), true, text);
  }
});

Deno.test("isIPv4 rejects extra or missing octets, out-of-range octets and leading zeros", () => {
  for (
    const text of [
      "10.10.10.10.1",
      "10.10.10",
      "256.1.1.1",
      "1.2.3.1000",
      "01.2.3.4",
      "1.2.3.04",
      "1.2.3.",
      ".1.2.3",
      "1..2.3",
      "",
      "a.b.c.d",
      "1.2.3.4 ",
      "+1.2.3.4",
      "1e1.2.3.4",
    ]
  ) {
    assert.equal(isIPv4(text), false, JSON.stringify(text));
  }
});

Deno.test("isIPv6 accepts the RFC 4291 forms", () => {
  for (
    const text of [
      "::",
      "::1",
      "1::",
      "2001:db8::1",
      "2001:0db8:0000:0000:0000:ff00:0042:8329",
      "FE80::ABCD",
      "1:2:3:4:5:6:7::",
      "::2:3:4:5:6:7:8",
      "::ffff:1.2.3.4",
      "64:ff9b::192.0.2.33",
      "1:2:3:4:5:6:1.2.3.4",
    ]
  ) {
    assert.equal(isIPv6(text), true, text);
  }
});

Deno.test("isIPv6 rejects too many groups, stray colons and bad parts", () => {
  for (
    const text of [
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8::",
      ":::",
      "1:::2",
      "1::2::3",
      ":1::",
      "::1:",
      "1:2:3:4:5:6:7:8:",
      "12345::",
      "g::1",
      "::ffff:1.2.3.256",
      "::ffff:1.2.3",
      "1:2:3:4:5:6:7:1.2.3.4",
      "1.2.3.4",
      "1.2.3.4::",
      "fe80::1%eth0",
      "",
      ":",
    ]
  ) {
    assert.equal(isIPv6(text), false, JSON.stringify(text));
  }
});

Deno.test("isHostName accepts DNS names and rejects bad labels", () => {
  for (const text of ["localhost", "edge-7", "a.example.com", "x1"]) {
    assert.equal(isHostName(text), true, text);
  }
  for (const text of ["-edge", "edge-", "a..b", "under_score", "a".repeat(64), ""]) {
    assert.equal(isHostName(text), false, JSON.stringify(text));
  }
});

Deno.test("parseHostPort reads IPv4, host names and bracketed IPv6", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:9090"), { host: "127.0.0.1", port: 9090 });
  assert.deepEqual(parseHostPort("0.0.0.0:0"), { host: "0.0.0.0", port: 0 });
  assert.deepEqual(parseHostPort("edge-7.example.com:65535"), { host: "edge-7.example.com", port: 65535 });
  assert.deepEqual(parseHostPort("[::1]:8080"), { host: "::1", port: 8080 });
  assert.deepEqual(parseHostPort("[::ffff:1.2.3.4]:53"), { host: "::ffff:1.2.3.4", port: 53 });
});

Deno.test("parseHostPort explains what is wrong with a bad address", () => {
  const cases: [string, string][] = [
    ["127.0.0.1", 'Cannot parse "127.0.0.1" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    ["::1:8080", 'Cannot parse "::1:8080" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    ["[::1]", 'Cannot parse "[::1]" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    ["host:http", 'Cannot parse "host:http" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    ["host:-1", 'Cannot parse "host:-1" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    ["", 'Cannot parse "" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)'],
    [":8080", 'Missing address before ":8080"'],
    ["10.10.10.10.1:80", '"10.10.10.10.1" is not a valid IPv4 address'],
    ["256.1.1.1:80", '"256.1.1.1" is not a valid IPv4 address'],
    ["01.2.3.4:80", '"01.2.3.4" is not a valid IPv4 address'],
    ["[1:2:3:4:5:6:7:8:9]:80", '"1:2:3:4:5:6:7:8:9" is not a valid IPv6 address'],
    ["[]:80", '"" is not a valid IPv6 address'],
    ["bad_host:80", '"bad_host" is not a valid address or host name'],
    ["127.0.0.1:65536", "Port 65536 is out of range 0..65535"],
    ["127.0.0.1:99999999999999999999", "Port 99999999999999999999 is out of range 0..65535"],
  ];
  for (const [text, message] of cases) assert.equal(parseHostPort(text), message, text);
});

Deno.test("formatHostPort brackets IPv6 and round-trips through parseHostPort", () => {
  assert.equal(formatHostPort({ host: "127.0.0.1", port: 80 }), "127.0.0.1:80");
  assert.equal(formatHostPort({ host: "::1", port: 80 }), "[::1]:80");
  assert.equal(formatHostPort({ host: "localhost", port: 0 }), "localhost:0");
  for (const text of ["10.0.0.1:5004", "[2001:db8::1]:443", "edge:9090"]) {
    const parsed = parseHostPort(text);
    assert.equal(typeof parsed, "object", text);
    assert.equal(formatHostPort(parsed as { host: string; port: number }), text);
  }
});
