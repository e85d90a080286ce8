import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { Hono } from "hono";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { JOIN_MIN_BYTES } from "../../lib/relay/participants.ts";
import { relayRole } from "../../lib/relay/role.ts";
import { collect } from "../net/udp_contract.ts";

const roles = builtinRoles();
function errorsOf(text: string): string[] {
  try {
    loadConfig(text, { file: "r.yaml", roles });
  } catch (error) {
    assert.ok(error instanceof ErrorList);
    return error.errors.map((e) => e.format());
  }
  assert.fail("accepted");
}

Deno.test("relay section reads relays with their targets and UDP settings", () => {
  const plan = loadConfig(
    `
relay:
  udp: portable
  batch: 32
  socket_buffer: 8MiB
  gso: false
  relays:
    - name: video
      listen: "[::]:5004"
      targets: ["[::1]:6004", "[::1]:6005"]
`,
    { file: "r.yaml", roles },
  );
  assert.deepEqual(plan.sections.relay, {
    udp: "portable",
    batch: 32,
    max_datagram: 65535,
    socket_buffer: 8 * 1024 * 1024,
    gso: false,
    thread: true,
    reflectors: [],
    relays: [{
      name: "video",
      listen: { host: "::", port: 5004 },
      targets: [{ host: "::1", port: 6004 }, { host: "::1", port: 6005 }],
      allow_sources: [],
    }],
  });
});

Deno.test("relay section reports its mistakes at their line and column", () => {
  const text = [
    "relay:", //                                     1
    "  udp: turbo", //                               2
    "  relays:", //                                  3
    "    - name: a", //                              4
    "      listen: localhost:5004", //               5
    "      targets: [127.0.0.1:1, 127.0.0.1:1]", //  6
    "    - name: a", //                              7
    "      listen: 0.0.0.0:5006", //                 8
    "      targets: []", //                          9
    "    - name: b", //                              10
    "      targets: [127.0.0.1:2]", //               11
  ].join("\n");
  assert.deepEqual(errorsOf(text), [
    `r.yaml:2:8: relay.udp: Expected one of auto, fast, portable, got "turbo"`,
    `r.yaml:5:15: relay.relays[0].listen: Expected an IP address, not the host name "localhost"`,
    `r.yaml:6:30: relay.relays[0].targets[1]: Repeated target "127.0.0.1:1" (first at line 6, column 17)`,
    `r.yaml:9:16: relay.relays[1].targets: Expected at least 1 item, got 0`,
    `r.yaml:10:7: relay.relays[2].listen: Missing required key "listen" (IP:PORT such as 0.0.0.0:5004 or [::1]:5004)`,
  ]);
});

Deno.test("relay section points a repeated relay name at both relays", () => {
  const text = "relay:\n  relays:\n    - {name: a, listen: 0.0.0.0:1, targets: [127.0.0.1:2]}\n" +
    "    - {name: a, listen: 0.0.0.0:3, targets: [127.0.0.1:4]}\n";
  assert.deepEqual(errorsOf(text), [
    `r.yaml:4:7: relay.relays[1]: Repeated relay name "a" (first at line 3, column 7)`,
  ]);
});

Deno.test("relay section reads reflectors with their defaults", () => {
  const plan = loadConfig(
    "relay:\n  reflectors:\n    - {name: lecture, data: 0.0.0.0:6000, registration: 0.0.0.0:6002, use_rtp: true}\n",
    { file: "r.yaml", roles },
  );
  assert.deepEqual((plan.sections.relay as { reflectors: unknown[] }).reflectors, [{
    name: "lecture",
    data: { host: "0.0.0.0", port: 6000 },
    registration: { host: "0.0.0.0", port: 6002 },
    use_rtp: true,
    timeout: 30_000,
    max_participants: 100,
    max_per_address: 4,
    allow: [],
    participants: [],
    allow_sources: [],
    confirm_rate: 10,
  }]);
});

Deno.test("relay section points a port clash at both sockets, RTCP ports included", () => {
  const text = [
    "relay:", //                                                                              1
    "  relays:", //                                                                           2
    "    - {name: v, listen: 127.0.0.1:6001, targets: [127.0.0.1:9]}", //                      3
    "  reflectors:", //                                                                       4
    "    - name: lecture", //                                                                 5
    "      data: 0.0.0.0:6000", //                                                            6
    "      registration: 0.0.0.0:7000", //                                                    7
    "      use_rtp: true", //                                                                 8
    "    - {name: other, data: 127.0.0.1:7000, registration: 127.0.0.1:0, use_rtp: true}", // 9
  ].join("\n");
  assert.deepEqual(errorsOf(text), [
    `r.yaml:6:13: relay: Port clash: RTCP data port of reflector "lecture" (0.0.0.0:6001) and relay "v" (127.0.0.1:6001), first at line 3, column 25`,
    `r.yaml:9:27: relay: Port clash: data port of reflector "other" (127.0.0.1:7000) and registration port of reflector "lecture" (0.0.0.0:7000), first at line 7, column 21`,
    `r.yaml:9:27: relay: Port clash: RTCP data port of reflector "other" (127.0.0.1:7001) and RTCP registration port of reflector "lecture" (0.0.0.0:7001), first at line 7, column 21`,
    `r.yaml:9:57: relay.reflectors[1].registration: With use_rtp the registration port needs a fixed port below 65535 (RTCP takes port + 1), got 0`,
  ]);
});

Deno.test("relay section checks reflector limits, address classes and static participants", () => {
  const text = [
    "relay:",
    "  reflectors:",
    "    - name: r",
    "      data: 0.0.0.0:6000",
    "      registration: 0.0.0.0:6002",
    "      timeout: 0s",
    "      max_participants: 0",
    "      allow: [lan]",
    "      participants: [127.0.0.1:5000, 127.0.0.1:5000]",
  ].join("\n");
  assert.deepEqual(errorsOf(text), [
    "r.yaml:6:16: relay.reflectors[0].timeout: Duration must be in 1s..1h, got 0ms",
    "r.yaml:7:25: relay.reflectors[0].max_participants: Expected an integer in 1..10000, got 0",
    `r.yaml:8:15: relay.reflectors[0].allow[0]: Expected an address class: loopback, multicast, unspecified, broadcast, got "lan"`,
    `r.yaml:9:38: relay.reflectors[0].participants[1]: Repeated participant "127.0.0.1:5000" (first at line 9, column 22)`,
  ]);
});

Deno.test("relay section reads allow_sources, and reports a bad prefix and an IPv6 participant of an IPv4 reflector", () => {
  const text = [
    "relay:", //                                                                              1
    "  relays:", //                                                                           2
    "    - name: a", //                                                                       3
    "      listen: 0.0.0.0:5004", //                                                          4
    "      targets: [127.0.0.1:6004]", //                                                     5
    "      allow_sources: [10.0.0.0/8, 10.1.2.3/8, example.org]", //                          6
  ].join("\n");
  assert.deepEqual(errorsOf(text), [
    `r.yaml:6:35: relay.relays[0].allow_sources[1]: Cannot read source prefix "10.1.2.3/8": host bits are set below /8 (did you mean 10.0.0.0/8?)`,
    `r.yaml:6:47: relay.relays[0].allow_sources[2]: Cannot read source prefix "example.org": not an IPv4 or IPv6 address (forms: 10.0.0.0/8, 2001:db8::/32, ::1)`,
  ]);
  const reflector = [
    "relay:",
    "  reflectors:",
    "    - name: r",
    "      data: 0.0.0.0:6000",
    "      registration: 0.0.0.0:6002",
    '      participants: [192.0.2.1:7000, "[2001:db8::1]:7000"]',
  ].join("\n");
  assert.deepEqual(errorsOf(reflector), [
    `r.yaml:6:38: relay.reflectors[0].participants[1]: Participant [2001:db8::1]:7000 is IPv6, but the registration port 0.0.0.0:6002 is IPv4 and cannot send to it`,
  ]);
  const plan = loadConfig(
    "relay:\n  relays:\n    - {name: a, listen: 0.0.0.0:1, targets: [127.0.0.1:2], allow_sources: [192.0.2.0/24, ::1]}\n",
    { file: "r.yaml", roles },
  );
  assert.deepEqual(
    (plan.sections.relay as { relays: { allow_sources: string[] }[] }).relays[0].allow_sources,
    ["192.0.2.0/24", "::1"],
  );
});

Deno.test("relay role refuses an IPv6 participant of an IPv4 reflector over the API with a 400, and goes on", async () => {
  const plan = loadConfig(
    "relay:\n  reflectors:\n    - {name: r, data: 127.0.0.1:0, registration: 127.0.0.1:0, allow: [loopback]}\n",
    { file: "r.yaml", roles },
  );
  const clock = new ManualClock(Date.now());
  const lines: string[] = [];
  const running = await relayRole.start(plan.sections.relay as Parameters<typeof relayRole.start>[0], {
    nodeName: "n",
    logger: new Logger({ level: "debug", clock, sink: (l) => lines.push(l) }),
    metrics: new MetricsRegistry(),
    clock,
  });
  const client = openUdp({ host: "127.0.0.1", port: 0 });
  try {
    const app = new Hono();
    running.routes!(app);
    const post = (address: string) =>
      app.request("/relay/reflectors/r/participants", {
        method: "POST",
        body: JSON.stringify({ address }),
      });
    const refused = await post("[2001:db8::1]:5000");
    assert.equal(refused.status, 400);
    assert.match(
      (await refused.json()).error,
      /^Participant \[2001:db8::1\]:5000 refused: reflector "r" sends from IPv4 sockets, which cannot reach an IPv6 address$/,
    );
    assert.equal((await post("127.0.0.1:5000")).status, 201);
    // The reflector's loops go on: a JOIN is still answered.
    const status = running.status() as { reflectors: { r: { registration: string } } };
    const port = Number(status.reflectors.r.registration.split(":")[1]);
    client.send(
      [new TextEncoder().encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))],
      client.destinations([{ host: "127.0.0.1", port }]),
    );
    const [challenge] = await collect(client, 1);
    assert.match(new TextDecoder().decode(challenge.data), /^EDGENODE-CHALLENGE /);
    const listed = await (await app.request("/relay/reflectors/r/participants")).json();
    assert.deepEqual(listed.map((p: { address: string }) => p.address), ["127.0.0.1:5000"]);
  } finally {
    await client.close();
    await running.stop(AbortSignal.abort());
  }
  assert.deepEqual(lines.filter((l) => l.includes("level=error")), []);
});
