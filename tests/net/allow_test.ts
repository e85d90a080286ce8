import assert from "node:assert/strict";
import { AllowListError, SourceAllowList } from "../../lib/net/allow.ts";

Deno.test("SourceAllowList.parse of an empty list allows every source", () => {
  const list = SourceAllowList.parse([]);
  assert.equal(list, SourceAllowList.ANY);
  assert.equal(list.allowsAll, true);
  for (const host of ["10.0.0.1", "::1", "2001:db8::7", "::ffff:192.0.2.1"]) {
    assert.equal(list.allows(host), true);
  }
});

Deno.test("SourceAllowList.allows matches IPv4 prefixes bit by bit", () => {
  const list = SourceAllowList.parse(["10.0.0.0/8", "192.168.4.0/22", "198.51.100.7"]);
  assert.equal(list.allowsAll, false);
  assert.equal(list.allows("10.255.1.2"), true);
  assert.equal(list.allows("11.0.0.1"), false);
  assert.equal(list.allows("192.168.4.0"), true);
  assert.equal(list.allows("192.168.7.255"), true);
  assert.equal(list.allows("192.168.8.0"), false);
  assert.equal(list.allows("192.168.3.255"), false);
  assert.equal(list.allows("198.51.100.7"), true);
  assert.equal(list.allows("198.51.100.8"), false);
});

Deno.test("SourceAllowList.allows matches IPv6 prefixes and single addresses", () => {
  const list = SourceAllowList.parse(["2001:db8::/32", "::1", "fe80::/10"]);
  assert.equal(list.allows("2001:db8:ffff::1"), true);
  assert.equal(list.allows("2001:db9::1"), false);
  assert.equal(list.allows("::1"), true);
  assert.equal(list.allows("::2"), false);
  assert.equal(list.allows("febf::1"), true);
  assert.equal(list.allows("fec0::1"), false);
});

Deno.test("SourceAllowList.allows never lets one family through the other's prefix", () => {
  const v4 = SourceAllowList.parse(["0.0.0.0/0"]);
  assert.equal(v4.allows("1.2.3.4"), true);
  assert.equal(v4.allows("2001:db8::1"), false);
  const v6 = SourceAllowList.parse(["::/0"]);
  assert.equal(v6.allows("2001:db8::1"), true);
  assert.equal(v6.allows("1.2.3.4"), false);
});

Deno.test("SourceAllowList.allows takes an IPv4-mapped sender as its IPv4 address", () => {
  const list = SourceAllowList.parse(["127.0.0.0/8"]);
  assert.equal(list.allows("::ffff:127.0.0.1"), true);
  assert.equal(list.allows("::ffff:7f00:1"), true);
  assert.equal(list.allows("::ffff:10.0.0.1"), false);
  const mapped = SourceAllowList.parse(["::ffff:10.0.0.0/104"]);
  assert.equal(mapped.allows("10.9.9.9"), true);
  assert.equal(mapped.allows("::ffff:10.9.9.9"), true);
  assert.equal(mapped.allows("11.0.0.1"), false);
});

Deno.test("SourceAllowList.allows refuses text that is not an address", () => {
  const list = SourceAllowList.parse(["0.0.0.0/0", "::/0"]);
  for (const host of ["", "localhost", "1.2.3", "::g", "10.0.0.1%eth0"]) {
    assert.equal(list.allows(host), false, host);
  }
});

Deno.test("SourceAllowList.allows keeps its answer when asked many distinct senders", () => {
  const list = SourceAllowList.parse(["10.0.0.0/16"]);
  for (let i = 0; i < 10_000; i++) {
    const host = `10.${i >> 8 & 1}.${i & 0xff}.${i % 7}`;
    assert.equal(list.allows(host), (i >> 8 & 1) === 0, host);
  }
  assert.equal(list.allows("10.0.0.1"), true);
});

Deno.test("SourceAllowList.parse keeps the prefixes as written", () => {
  const list = SourceAllowList.parse(["10.0.0.0/8", "::1"]);
  assert.deepEqual(list.prefixes, ["10.0.0.0/8", "::1"]);
});

Deno.test("SourceAllowList.parse throws AllowListError naming a bad entry", () => {
  const cases: [string, RegExp][] = [
    ["example.com", /not an IPv4 or IPv6 address/],
    ["10.0.0.0/33", /prefix length must be 0\.\.32/],
    ["2001:db8::/129", /prefix length must be 0\.\.128/],
    ["10.0.0.0/", /prefix length/],
    ["10.0.0.0/08", /prefix length/],
    ["10.0.0.0/8/8", /prefix length/],
    ["256.0.0.0/8", /not an IPv4 or IPv6 address/],
    ["10.1.2.3/8", /host bits are set below \/8 \(did you mean 10\.0\.0\.0\/8\?\)/],
    ["2001:db8::1/32", /did you mean 2001:db8::\/32\?/],
  ];
  for (const [entry, detail] of cases) {
    assert.throws(
      () => SourceAllowList.parse(["127.0.0.1", entry]),
      (e: unknown) => {
        assert.ok(e instanceof AllowListError, entry);
        assert.equal(e.entry, entry);
        assert.match(e.message, new RegExp(`^Cannot read source prefix "${entry.replaceAll(".", "\\.")}": `));
        assert.match(e.message, detail);
        return true;
      },
    );
  }
});
