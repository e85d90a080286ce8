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

Deno.test("parseProbeArgs reads RTP send options with defaults and given values", () => {
  const d = parseProbeArgs(["send", "--to", "127.0.0.1:5004", "--rtp"]);
  assert.ok(d.mode === "send");
  assert.deepEqual(d.options.rtp, {
    payloadType: 96,
    clockRate: 90000,
    srIntervalMs: 1000,
    cname: "edgenode-probe",
    captureDelayMs: 0,
  });
  const g = parseProbeArgs([
    "send",
    "--to",
    "127.0.0.1:5004",
    "--rtp",
    "--pt",
    "32",
    "--ssrc",
    "0x51DE0",
    "--clock-rate",
    "16000",
    "--sr",
    "off",
    "--cname",
    "lecture@brno",
    "--capture-delay",
    "1s",
    "--size",
    "32",
  ]);
  assert.ok(g.mode === "send");
  assert.equal(g.options.size, 32);
  assert.deepEqual(g.options.rtp, {
    payloadType: 32,
    ssrc: 0x51de0,
    clockRate: 16000,
    srIntervalMs: 0,
    cname: "lecture@brno",
    captureDelayMs: 1000,
  });
  const sr = parseProbeArgs([
    "send",
    "--to",
    "127.0.0.1:5004",
    "--rtp",
    "--sr",
    "250ms",
    "--ssrc",
    "4294967295",
  ]);
  assert.ok(sr.mode === "send");
  assert.equal(sr.options.rtp?.srIntervalMs, 250);
  assert.equal(sr.options.rtp?.ssrc, 2 ** 32 - 1);
});

Deno.test("parseProbeArgs reads recv --rtp and the clock rates of dynamic payload types", () => {
  const r = parseProbeArgs([
    "recv",
    "--listen",
    "127.0.0.1:5004",
    "--rtp",
    "--clock-rate",
    "96:90000, 97:16000",
  ]);
  assert.ok(r.mode === "recv");
  assert.equal(r.options.rtp, true);
  assert.deepEqual(r.options.clockRates, new Map([[96, 90000], [97, 16000]]));
  const plain = parseProbeArgs(["recv", "--listen", "127.0.0.1:5004"]);
  assert.ok(plain.mode === "recv");
  assert.equal(plain.options.rtp, undefined);
  assert.equal(plain.options.clockRates, undefined);
});

Deno.test("parseProbeArgs rejects bad RTP options with one line each", () => {
  const to = ["send", "--to", "127.0.0.1:5004"];
  const bad: [string[], RegExp][] = [
    [[...to, "--pt", "96"], /^probe send: --pt needs --rtp$/],
    [[...to, "--capture-delay", "1s"], /--capture-delay needs --rtp/],
    [[...to, "--rtp", "--pt", "128"], /--pt must be an integer in 0..127, got "128"/],
    [[...to, "--rtp", "--pt", "72"], /--pt must not be 72..76 .*RTCP/],
    [
      [...to, "--rtp", "--ssrc", "4294967296"],
      /--ssrc must be an integer in 0..4294967295, got "4294967296"/,
    ],
    [[...to, "--rtp", "--ssrc", "0x123456789"], /--ssrc must be an integer/],
    [[...to, "--rtp", "--clock-rate", "90kHz"], /--clock-rate must be an integer in 1000..10000000/],
    [[...to, "--rtp", "--sr", "1"], /--sr must be a duration of at least 10ms, or 0 \/ off, got "1"/],
    [[...to, "--rtp", "--cname", ""], /--cname must be 1..255 bytes of UTF-8, got 0 bytes/],
    [[...to, "--rtp", "--cname", "x".repeat(256)], /--cname must be 1..255 bytes/],
    [[...to, "--rtp", "--capture-delay", "late"], /--capture-delay must be a duration such as 1s/],
    [[...to, "--rtp", "--size", "31"], /--size must be at least 32 with --rtp \(12 bytes of RTP header/],
    [["send", "--to", "127.0.0.1:65535", "--rtp"], /port 65535 leaves no port \+ 1 for RTCP/],
    [["recv", "--listen", "127.0.0.1:1", "--pt", "96"], /--pt does not apply to recv/],
    [["recv", "--listen", "127.0.0.1:1", "--capture-delay", "1s"], /--capture-delay does not apply to recv/],
    [["recv", "--listen", "127.0.0.1:1", "--clock-rate", "90000"], /--clock-rate must be PT:HZ.*got "90000"/],
    [["recv", "--listen", "127.0.0.1:1", "--clock-rate", "200:8000"], /--clock-rate must be PT:HZ/],
  ];
  for (const [args, message] of bad) {
    assert.throws(
      () => parseProbeArgs(args),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
      args.join(" "),
    );
  }
  // 65535 is fine without sender reports.
  assert.doesNotThrow(() => parseProbeArgs(["send", "--to", "127.0.0.1:65535", "--rtp", "--sr", "off"]));
});

Deno.test("dueBy integrates a fixed rate and a linear ramp", () => {
  assert.equal(dueBy(1000, 5000, 5000, 5000), 5000);
  assert.equal(dueBy(9999, 5000, 5000, 5000), 25000, "never beyond the duration");
  // From 0 to 10000/s over 2 s: the area under the ramp is 10000 datagrams, a quarter of it in the first second.
  assert.equal(dueBy(2000, 0, 10000, 2000), 10000);
  assert.equal(dueBy(1000, 0, 10000, 2000), 2500);
});
