import assert from "node:assert/strict";
import { parseProbeArgs } from "../../lib/cli/probe.ts";
import { UsageError } from "../../lib/core/errors.ts";
import { dueBy } from "../../lib/probe/run.ts";

Deno.test("parseProbeArgs reads a send with defaults", () => {
  assert.deepEqual(parseProbeArgs(["send", "--to", "127.0.0.1:5004"]), {
    mode: "send",
    json: false,
    quiet: false,
    options: {
      to: { host: "127.0.0.1", port: 5004 },
      size: 100,
      rate: [1000, 1000],
      durationMs: 5000,
      count: 0,
      stream: 1,
      impl: "auto",
    },
  });
});

Deno.test("parseProbeArgs reads a ramp and a join", () => {
  const send = parseProbeArgs([
    "send",
    "--to",
    "[::1]:9",
    "--ramp",
    "1000:50000",
    "--size",
    "1450",
    "--json",
  ]);
  assert.ok(send.mode === "send");
  assert.deepEqual(send.options.rate, [1000, 50000]);
  assert.equal(send.options.size, 1450);
  assert.equal(send.json, true);
  const recv = parseProbeArgs(["recv", "--join", "127.0.0.1:6001", "--idle", "500ms", "--udp", "portable"]);
  assert.ok(recv.mode === "recv");
  assert.deepEqual(recv.options.listen, { host: "0.0.0.0", port: 0 });
  assert.deepEqual(recv.options.join, { host: "127.0.0.1", port: 6001 });
  assert.equal(recv.options.idleMs, 500);
  assert.equal(recv.options.impl, "portable");
});

Deno.test("parseProbeArgs rejects bad input with one line each", () => {
  const bad: [string[], RegExp][] = [
    [["flood"], /expected "send" or "recv", got "flood"/],
    [["send"], /--to IP:PORT is required/],
    [["send", "--to", "host.example:1"], /expected an IP address, got "host.example"/],
    [["send", "--to", "127.0.0.1:1", "--rate", "10", "--ramp", "1:2"], /--rate or --ramp, not both/],
    [["send", "--to", "127.0.0.1:1", "--ramp", "fast"], /--ramp must be FROM:TO/],
    [["send", "--to", "127.0.0.1:1", "--size", "10"], /--size must be an integer in 20..65507, got "10"/],
    [["send", "--to", "127.0.0.1:1", "--join", "127.0.0.1:2"], /--join does not apply to send/],
    [["send", "--to", "127.0.0.1:1", "--duration", "5"], /"5" is not a duration/],
    [["recv"], /give --listen IP:PORT or --join IP:PORT/],
    [["recv", "--listen", "127.0.0.1:1", "--join", "127.0.0.1:2"], /give --listen IP:PORT or --join IP:PORT/],
    [["recv", "--listen", "127.0.0.1:1", "--udp", "warp"], /--udp must be one of auto, fast, portable/],
    [["recv", "--listen", "127.0.0.1:1", "--bogus"], /^probe recv: Unknown option '--bogus'/],
  ];
  for (const [args, message] of bad) {
    assert.throws(
      () => parseProbeArgs(args),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
    );
  }
});

Deno.test("dueBy integrates a fixed rate and a linear ramp", () => {
  assert.equal(dueBy(1000, 5000, 5000, 5000), 5000);
  assert.equal(dueBy(9999, 5000, 5000, 5000), 25000, "never beyond the duration");
  // From 0 to 10000/s over 2 s: the area under the ramp is 10000 datagrams, a quarter of it in the first second.
  assert.equal(dueBy(2000, 0, 10000, 2000), 10000);
  assert.equal(dueBy(1000, 0, 10000, 2000), 2500);
});
