import assert from "node:assert/strict";
import { NTP_UNIX_OFFSET_S, ntpToUnixUs, unixUsToNtp } from "../../lib/media/ntp.ts";

Deno.test("ntpToUnixUs maps the Unix epoch and half seconds", () => {
  assert.equal(ntpToUnixUs(NTP_UNIX_OFFSET_S, 0), 0);
  assert.equal(ntpToUnixUs(NTP_UNIX_OFFSET_S + 10, 0x80000000), 10_500_000);
});

Deno.test("unixUsToNtp gives unsigned halves", () => {
  // 2026-01-01T00:00:00Z: NTP seconds above 2^31.
  const us = Date.UTC(2026, 0, 1) * 1000 + 250_000;
  const [s, f] = unixUsToNtp(us);
  assert.equal(s, Date.UTC(2026, 0, 1) / 1000 + NTP_UNIX_OFFSET_S);
  assert.ok(s > 2 ** 31);
  assert.equal(f, 0x40000000);
});

Deno.test("unixUsToNtp and ntpToUnixUs round-trip within 1 µs", () => {
  const base = Date.UTC(2026, 4, 17, 12) * 1000;
  for (let i = 0; i < 2000; i++) {
    const us = base + i * 987_654.321 + (i % 7) * 0.5;
    const [s, f] = unixUsToNtp(us);
    assert.ok(Math.abs(ntpToUnixUs(s, f) - us) < 1, `${us}`);
    assert.ok(f >= 0 && f < 2 ** 32 && Number.isInteger(f));
  }
  // Just below a whole second the fraction rounds up into the next second.
  const [s, f] = unixUsToNtp(1_999_999.9999999);
  assert.equal(s, NTP_UNIX_OFFSET_S + 2);
  assert.equal(f, 0);
});

Deno.test("ntpToUnixUs reads seconds with the top bit clear as the era after 2036", () => {
  const after = Date.UTC(2040, 0, 1) * 1000;
  const [s, f] = unixUsToNtp(after);
  assert.ok(s < 2 ** 31);
  assert.equal(ntpToUnixUs(s, f), after);
});
